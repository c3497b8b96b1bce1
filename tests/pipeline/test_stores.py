"""Tests of the Zarr store helpers: URLs, empty stores, region writes, grid metadata."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from odc.geo.geobox import GeoBox

from pipeline.stores import (
    ChunkAlignmentError,
    create_empty_store,
    grid_of,
    join_url,
    open_dataset,
    set_grid_metadata,
    storage_options_from_env,
    write_region,
)

GRID = GeoBox.from_bbox((600_000, 5_000_000, 600_000 + 250 * 20, 5_000_000 + 180 * 20), "EPSG:32633", resolution=20)


def prediction_template(geobox: GeoBox = GRID, chunk_px: int = 64) -> xr.Dataset:
    """A lazy two-variable store template on ``geobox``, as a prediction stage would build it."""
    shape = geobox.shape.yx
    ds = xr.Dataset(
        {
            "landcover": (("y", "x"), da.zeros(shape, dtype=np.uint8, chunks=chunk_px), {"_FillValue": 255}),
            "probability": (
                ("class", "y", "x"),
                da.zeros((3, *shape), dtype=np.uint8, chunks=(3, chunk_px, chunk_px)),
                {"_FillValue": 255},
            ),
        },
        coords={"class": ["water", "crop", "forest"]},
    )
    return set_grid_metadata(ds, geobox)


@pytest.mark.parametrize(
    ("root", "parts", "expected"),
    [
        ("s3://bucket/run", ("inputs", "a.zarr"), "s3://bucket/run/inputs/a.zarr"),
        ("s3://bucket/run/", ("/inputs/", "a.zarr"), "s3://bucket/run/inputs/a.zarr"),
        ("gs://b", ("mosaic.zarr",), "gs://b/mosaic.zarr"),
        ("/data/run", ("inputs", "a.zarr"), "/data/run/inputs/a.zarr"),
        ("relative", ("x",), "relative/x"),
    ],
)
def test_join_url(root, parts, expected):
    assert join_url(root, *parts) == expected


def test_storage_options_from_env_takes_endpoint_and_region(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-to-be-copied")

    options = storage_options_from_env("s3://bucket/key")

    assert options == {"endpoint_url": "http://127.0.0.1:9000", "client_kwargs": {"region_name": "eu-central-1"}}
    assert "not-to-be-copied" not in repr(options)


def test_storage_options_from_env_gdal_style_endpoint(monkeypatch):
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_S3_ENDPOINT", "minio.local:9000")
    monkeypatch.setenv("AWS_HTTPS", "NO")

    assert storage_options_from_env("s3://bucket") == {"endpoint_url": "http://minio.local:9000"}
    assert storage_options_from_env("/local/path") == {}


def test_unwritten_chunks_read_back_as_fill(tmp_path):
    url = str(tmp_path / "predictions.zarr")

    create_empty_store(url, prediction_template())

    back = open_dataset(url)
    assert back["landcover"].dtype == np.uint8
    assert (back["landcover"].values == 255).all()
    assert (back["probability"].values == 255).all()
    assert list(back["class"].values) == ["water", "crop", "forest"]
    assert grid_of(back) == GRID


def test_region_write_round_trip(tmp_path):
    url = str(tmp_path / "predictions.zarr")
    create_empty_store(url, prediction_template())
    block = np.arange(64 * 58, dtype=np.uint8).reshape(64, 58)
    region = {"y": slice(64, 128), "x": slice(192, 250)}

    write_region(xr.Dataset({"landcover": (("y", "x"), block)}), url, region)

    back = open_dataset(url)["landcover"].values
    np.testing.assert_array_equal(back[64:128, 192:250], block)
    assert (back[:64] == 255).all()
    assert (back[64:128, :192] == 255).all()


def test_region_write_from_dask_chunks(tmp_path):
    url = str(tmp_path / "predictions.zarr")
    create_empty_store(url, prediction_template())
    values = da.ones((3, 128, 128), dtype=np.uint8, chunks=(3, 64, 64)) * 7

    write_region(xr.Dataset({"probability": (("class", "y", "x"), values)}), url, {"y": slice(0, 128), "x": slice(64, 192)})

    back = open_dataset(url)["probability"].values
    assert (back[:, :128, 64:192] == 7).all()
    assert (back[:, 128:] == 255).all()


@pytest.mark.parametrize(
    ("region", "chunks", "message"),
    [
        ({"y": slice(10, 74), "x": slice(0, 64)}, None, r"region\['y'\] = 10:74 .* not aligned"),
        ({"y": slice(0, 64), "x": slice(64, 100)}, None, r"region\['x'\] = 64:100 .* not aligned"),
        ({"y": slice(0, 128), "x": slice(0, 64)}, ((32, 96), (64,)), r"dask chunks .* along 'y' start at \[32\]"),
    ],
)
def test_region_write_rejects_misaligned(tmp_path, region, chunks, message):
    url = str(tmp_path / "predictions.zarr")
    create_empty_store(url, prediction_template())
    height = region["y"].stop - region["y"].start
    width = region["x"].stop - region["x"].start
    values = da.zeros((height, width), dtype=np.uint8, chunks=chunks or (height, width))

    with pytest.raises(ChunkAlignmentError, match=message):
        write_region(xr.Dataset({"landcover": (("y", "x"), values)}), url, region)

    assert (open_dataset(url)["landcover"].values == 255).all()


def test_region_write_rejects_wrong_dtype(tmp_path):
    url = str(tmp_path / "predictions.zarr")
    create_empty_store(url, prediction_template())

    with pytest.raises(ValueError, match=r"is int64 but the store contains uint8; cast it"):
        write_region(xr.Dataset({"landcover": (("y", "x"), np.zeros((64, 64), dtype=np.int64))}), url, {"y": slice(0, 64), "x": slice(0, 64)})


def test_create_empty_store_requires_fill_value(tmp_path):
    template = prediction_template()
    del template["landcover"].attrs["_FillValue"]

    with pytest.raises(ValueError, match="'landcover' has no _FillValue"):
        create_empty_store(str(tmp_path / "x.zarr"), template)


def test_create_empty_store_keeps_existing(tmp_path):
    url = str(tmp_path / "predictions.zarr")
    create_empty_store(url, prediction_template())

    with pytest.raises(FileExistsError):
        create_empty_store(url, prediction_template())


def test_open_dataset_missing_store(tmp_path):
    with pytest.raises(FileNotFoundError, match="no Zarr store at"):
        open_dataset(str(tmp_path / "absent.zarr"))


def test_grid_of_without_geotransform_uses_coordinates():
    ds = prediction_template()
    del ds["spatial_ref"].attrs["GeoTransform"]

    assert grid_of(ds) == GRID


def test_grid_of_rejects_inconsistent_geotransform():
    ds = prediction_template()
    ds["spatial_ref"].attrs["GeoTransform"] = "600010.0 20.0 0.0 5003600.0 0.0 -20.0"

    with pytest.raises(ValueError, match="disagrees with the x/y coordinates"):
        grid_of(ds)


def test_grid_of_rejects_missing_crs():
    with pytest.raises(ValueError, match="no 'spatial_ref' coordinate"):
        grid_of(xr.Dataset({"a": (("y", "x"), np.zeros((2, 2)))}))


def test_s3_store_round_trip(s3_bucket):
    url = f"s3://{s3_bucket}/run/predictions.zarr"
    create_empty_store(url, prediction_template())
    block = np.full((64, 64), 3, dtype=np.uint8)

    write_region(xr.Dataset({"landcover": (("y", "x"), block)}), url, {"y": slice(0, 64), "x": slice(64, 128)})

    back = open_dataset(url)
    assert back.rio.crs.to_epsg() == 32633
    assert tuple(back.rio.transform())[:6] == tuple(GRID.affine)[:6]
    values = back["landcover"].values
    assert (values[:64, 64:128] == 3).all()
    assert (values[:64, :64] == 255).all()


def test_stale_rioxarray_encoding_is_dropped(tmp_path):
    template = prediction_template()
    template["landcover"].attrs.update(scale_factor=0.5, add_offset=1.0)
    template["landcover"].encoding.update(scale_factor=0.5, add_offset=1.0, _FillValue=255, dtype="uint8")
    url = str(tmp_path / "predictions.zarr")

    create_empty_store(url, template)
    write_region(xr.Dataset({"landcover": (("y", "x"), np.full((64, 64), 9, dtype=np.uint8))}), url, {"y": slice(0, 64), "x": slice(0, 64)})

    raw = open_dataset(url)["landcover"]
    assert raw.values[0, 0] == 9
    assert raw.values[-1, -1] == 255
    decoded = open_dataset(url, mask_and_scale=True)["landcover"]
    assert decoded.values[0, 0] == 9 * 0.5 + 1.0
    assert np.isnan(decoded.values[-1, -1])
