"""Tests of ingest: real Sentinel-2 scenes loaded onto the job grid and written to Zarr."""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import timedelta

import numpy as np
import pytest
import rasterio
import rasterio.warp
import xarray as xr
from odc.geo.geobox import GeoBox

from pipeline import layout
from pipeline.completion import is_complete
from pipeline.grid import plan_grid
from pipeline.ingest import (
    decode_reflectance,
    encode_reflectance,
    group_observations,
    load_observation,
    observation_id_of,
    write_input_cube,
)
from pipeline.stores import grid_of, open_dataset
from pipeline.reading import NotGeoreferencedError
from tests.pipeline.geotiffs import (
    GF2_MSS_STEM,
    footprint_of,
    read_dn,
    source_geobox,
    write_decimated_gf2_delivery,
    write_utm_scene,
)

S2_BAND_ORDER = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]


def bilinear_upsample_2x(values: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of a grid onto a grid of half its pixel size, at pixel centres."""
    size_y, size_x = values.shape
    y = np.arange(2 * size_y) / 2 - 0.25
    x = np.arange(2 * size_x) / 2 - 0.25
    along_x = np.stack([np.interp(x, np.arange(size_x), row) for row in values])
    return np.stack([np.interp(y, np.arange(size_y), column) for column in along_x.T]).T


def test_l1c_cube_layout(l1c_scene):
    geobox = plan_grid([l1c_scene])

    ds = load_observation([l1c_scene], geobox, chunk_px=512)

    reflectance = ds[layout.REFLECTANCE_VAR]
    assert reflectance.dims == ("band", "y", "x")
    assert reflectance.dtype == np.int16
    assert list(ds["band"].values) == S2_BAND_ORDER
    np.testing.assert_allclose(
        ds[layout.WAVELENGTH_COORD].values,
        [0.443, 0.49, 0.56, 0.665, 0.705, 0.74, 0.783, 0.842, 0.865, 0.945, 1.375, 1.61, 2.19],
        atol=0.0015,
    )
    assert reflectance.data.chunksize == (13, 512, 512)
    assert ds.attrs["gsd_m"] == 10.0
    assert ds.attrs["platform"] == "sentinel-2a"
    assert ds.attrs["item_ids"] == [l1c_scene.item_id]
    assert ds.attrs["datetime"] == "2016-01-12T15:56:42Z"
    assert grid_of(ds) == geobox


def test_l1c_10m_band_equals_dn_times_scale(l1c_scene, l1c_dir):
    geobox = plan_grid([l1c_scene])

    ds = load_observation([l1c_scene], geobox, bands=["B02", "B08"], chunk_px=512)

    stored = ds[layout.REFLECTANCE_VAR].values
    np.testing.assert_array_equal(stored[0], read_dn(l1c_dir / "B02.tif"))
    np.testing.assert_array_equal(stored[1], read_dn(l1c_dir / "B08.tif"))


def test_l1c_coarse_bands_nearest_replicate_pixels(l1c_scene, l1c_dir):
    geobox = plan_grid([l1c_scene])

    ds = load_observation([l1c_scene], geobox, bands=["B05", "B01"], resampling="nearest", chunk_px=512)

    stored = ds[layout.REFLECTANCE_VAR].values
    b05 = read_dn(l1c_dir / "B05.tif")
    b01 = read_dn(l1c_dir / "B01.tif")
    np.testing.assert_array_equal(stored[0], np.repeat(np.repeat(b05, 2, axis=0), 2, axis=1))
    np.testing.assert_array_equal(stored[1], np.repeat(np.repeat(b01, 6, axis=0), 6, axis=1))


def test_l1c_20m_band_bilinear_at_interior_pixels(l1c_scene, l1c_dir):
    geobox = plan_grid([l1c_scene])

    ds = load_observation([l1c_scene], geobox, bands=["B05"], resampling="bilinear", chunk_px=256)

    stored = ds[layout.REFLECTANCE_VAR].values[0].astype(np.float64)
    expected = bilinear_upsample_2x(read_dn(l1c_dir / "B05.tif").astype(np.float64))
    interior = (slice(2, -2), slice(2, -2))
    assert np.abs(stored[interior] - expected[interior]).max() <= 1.0
    for row, column in [(2, 2), (101, 500), (777, 3), (1017, 1017)]:
        assert abs(stored[row, column] - expected[row, column]) <= 1.0


def test_l2a_reflectance_applies_scale_and_offset(l2a_scene, l2a_dir):
    # Processing baseline 04.00 and later store reflectance with an offset of -0.1.
    offset_bands = tuple(replace(band, offset=-0.1) if band.role == "reflectance" else band for band in l2a_scene.bands)
    scene = replace(l2a_scene, bands=offset_bands)
    geobox = source_geobox(l2a_dir / "B04.tif")

    ds = load_observation([scene], geobox, bands=["B04", "B11"], resampling="nearest", chunk_px=512)

    stored = ds[layout.REFLECTANCE_VAR].values
    b04 = read_dn(l2a_dir / "B04.tif")
    np.testing.assert_array_equal(stored[0], b04 - 1000)
    b11 = read_dn(l2a_dir / "B11.tif")
    np.testing.assert_array_equal(stored[1, :1098, :1098], np.repeat(np.repeat(b11, 2, axis=0), 2, axis=1) - 1000)
    decoded = decode_reflectance(ds[layout.REFLECTANCE_VAR]).values
    np.testing.assert_allclose(decoded[0], b04 * 1e-4 - 0.1, atol=1e-6)


def test_l2a_outside_footprint_is_nodata(l2a_scene, l2a_dir):
    padded = source_geobox(l2a_dir / "B04.tif").pad(8)

    ds = load_observation([l2a_scene], padded, bands=["B04", "SCL"], chunk_px=512)

    stored = ds[layout.REFLECTANCE_VAR].values[0]
    scl = ds["SCL"].values
    assert (stored[:8] == layout.REFLECTANCE_FILL).all()
    assert (stored[:, -8:] == layout.REFLECTANCE_FILL).all()
    assert (scl[:8] == layout.CLASSIFICATION_FILL).all()
    assert (stored[8:-8, 8:-8] != layout.REFLECTANCE_FILL).all()
    assert (scl[8:-8, 8:-8] != layout.CLASSIFICATION_FILL).all()


@pytest.mark.parametrize("resolution_m", [100.0, 400.0])
def test_l2a_scl_values_stay_classes(l2a_scene, l2a_dir, resolution_m):
    source_classes = set(np.unique(read_dn(l2a_dir / "SCL.tif")).tolist())
    geobox = source_geobox(l2a_dir / "B04.tif")
    if resolution_m != 100.0:
        geobox = geobox.zoom_out(resolution_m / 100.0)

    ds = load_observation([l2a_scene], geobox, bands=["B04", "SCL"], chunk_px=256)

    scl = ds["SCL"]
    assert scl.dtype == np.uint8
    assert scl.dims == ("y", "x")
    assert set(np.unique(scl.values).tolist()) <= source_classes
    assert {8, 9, 10} & set(np.unique(scl.values).tolist())


def test_nodata_masked_and_valid_zero_kept(l1c_scene, l1c_dir, tmp_path):
    with rasterio.open(l1c_dir / "B02.tif") as src:
        profile = src.profile
        values = src.read(1)
    values[100:110, 200:230] = 0
    for name, nodata in [("with_nodata.tif", 0), ("without_nodata.tif", None)]:
        with rasterio.open(tmp_path / name, "w", **{**profile, "nodata": nodata}) as dst:
            dst.write(values, 1)
    base = l1c_scene.band("B02")
    masked_band = replace(base, name="B02", href=str(tmp_path / "with_nodata.tif"), nodata=0)
    valid_band = replace(base, name="B03", href=str(tmp_path / "without_nodata.tif"), nodata=None, wavelength_um=0.56)
    scene = replace(l1c_scene, bands=(masked_band, valid_band))
    geobox = plan_grid([scene])

    ds = load_observation([scene], geobox, chunk_px=512)

    stored = ds[layout.REFLECTANCE_VAR].values
    assert (stored[0, 100:110, 200:230] == layout.REFLECTANCE_FILL).all()
    assert (stored[1, 100:110, 200:230] == 0).all()
    assert (stored[:, 90:100] != layout.REFLECTANCE_FILL).all()


def test_overlapping_scenes_merge_first_valid(l1c_scene, l1c_dir, tmp_path):
    with rasterio.open(l1c_dir / "B02.tif") as src:
        profile = {**src.profile, "nodata": 0}
        values = src.read(1)
    first = values.copy()
    first[:, 600:] = 0  # the first tile ends at column 600
    second = values // 2
    second[:, :400] = 0  # the second tile starts at column 400
    for name, data in [("first.tif", first), ("second.tif", second)]:
        with rasterio.open(tmp_path / name, "w", **profile) as dst:
            dst.write(data, 1)
    base = replace(l1c_scene.band("B02"), nodata=0)
    scene_a = replace(l1c_scene, item_id="tile-a", bands=(replace(base, href=str(tmp_path / "first.tif")),))
    scene_b = replace(
        l1c_scene,
        item_id="tile-b",
        datetime_utc=l1c_scene.datetime_utc + timedelta(seconds=5),
        bands=(replace(base, href=str(tmp_path / "second.tif")),),
    )
    (observation,) = group_observations([scene_b, scene_a]).values()
    geobox = plan_grid(observation)

    ds = load_observation(observation, geobox, chunk_px=256)

    stored = ds[layout.REFLECTANCE_VAR].values[0]
    np.testing.assert_array_equal(stored[:, :600], values[:, :600])
    np.testing.assert_array_equal(stored[:, 600:], values[:, 600:] // 2)
    assert ds.attrs["item_ids"] == ["tile-a", "tile-b"]


def test_group_observations_splits_passes_and_collections(l1c_scene):
    start = l1c_scene.datetime_utc
    same_pass = replace(l1c_scene, item_id="b", datetime_utc=start + timedelta(seconds=4))
    next_orbit = replace(l1c_scene, item_id="c", datetime_utc=start + timedelta(minutes=100))
    other_product = replace(l1c_scene, item_id="d", collection="sentinel-2-l2a")

    groups = group_observations([next_orbit, same_pass, l1c_scene, other_product])

    assert list(groups) == sorted(groups)
    assert len(groups) == 3
    assert [scene.item_id for scene in groups["sentinel-2a_20160112_155642_sentinel-2-l1c"]] == [l1c_scene.item_id, "b"]
    assert [scene.item_id for scene in groups["sentinel-2a_20160112_173642_sentinel-2-l1c"]] == ["c"]
    assert [scene.item_id for scene in groups["sentinel-2a_20160112_155642_sentinel-2-l2a"]] == ["d"]


def test_observation_id_is_filesystem_safe(l1c_scene):
    scene = replace(l1c_scene, platform="GF 2/PMS", collection="gaofen:l1a")

    observation_id = observation_id_of([scene])

    assert observation_id == "gf-2-pms_20160112_155642_gaofen-l1a"


def test_encode_reflectance_keeps_zero_and_clips():
    encoded = encode_reflectance(np.array([0.0, -0.1, 0.12345, np.nan, 6.5535, -4.0]))

    assert encoded.tolist() == [0, -1000, 1234, layout.REFLECTANCE_FILL, 32767, -32767]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"bands": ["B99"]}, KeyError, "no band 'B99'"),
        ({"chunk_px": 0}, ValueError, "chunk_px must be a positive"),
    ],
)
def test_load_observation_rejects_bad_input(l1c_scene, kwargs, error, message):
    geobox = plan_grid([l1c_scene])

    with pytest.raises(error, match=message):
        load_observation([l1c_scene], geobox, **kwargs)


def test_load_observation_rejects_mixed_sensors(l1c_scene):
    other = replace(l1c_scene, platform="sentinel-2b")

    with pytest.raises(ValueError, match="split them with group_observations"):
        load_observation([l1c_scene, other], plan_grid([l1c_scene]))


def test_input_cube_round_trip_local(l2a_scene, l2a_dir, tmp_path):
    geobox = source_geobox(l2a_dir / "B04.tif").pad(4)
    ds = load_observation([l2a_scene], geobox, bands=["B02", "B04", "B8A", "SCL"], chunk_px=256)
    url = str(tmp_path / "inputs" / f"{ds.attrs['observation_id']}.zarr")

    returned = write_input_cube(ds, url)

    assert returned == url
    assert is_complete(url)
    back = open_dataset(url)
    assert back[layout.REFLECTANCE_VAR].dtype == np.int16
    assert back["SCL"].dtype == np.uint8
    assert back.rio.crs.to_epsg() == 32629
    assert tuple(back.rio.transform())[:6] == tuple(geobox.affine)[:6]
    assert grid_of(back) == geobox
    assert back[layout.REFLECTANCE_VAR].encoding["chunks"] == (3, 256, 256)
    xr.testing.assert_equal(back[layout.REFLECTANCE_VAR].drop_vars("spatial_ref"), ds[layout.REFLECTANCE_VAR].drop_vars("spatial_ref").compute())
    np.testing.assert_array_equal(back["SCL"].values, ds["SCL"].values)
    assert back.attrs["observation_id"] == ds.attrs["observation_id"]
    plain = xr.open_zarr(url, decode_coords="all", consolidated=False)
    assert plain.rio.crs.to_epsg() == 32629
    assert np.isnan(plain[layout.REFLECTANCE_VAR].values[:, 0, 0]).all()
    np.testing.assert_allclose(plain[layout.REFLECTANCE_VAR].values[1, 4:-4, 4:-4], read_dn(l2a_dir / "B04.tif") * 1e-4, atol=1e-6)


@pytest.mark.parametrize("target", ["local", "s3"])
def test_input_cube_written_by_cluster_workers(l1c_scene, cluster_client, s3_bucket, tmp_path, target):
    from distributed import get_task_stream

    geobox = plan_grid([l1c_scene], resolution_m=20)
    ds = load_observation([l1c_scene], geobox, bands=["B02", "B05", "B8A"], chunk_px=128)
    root = str(tmp_path) if target == "local" else f"s3://{s3_bucket}/run"
    url = f"{root}/inputs/{ds.attrs['observation_id']}.zarr"
    workers = set(cluster_client.scheduler_info()["workers"])

    with get_task_stream(cluster_client) as stream:
        write_input_cube(ds, url, client=cluster_client)

    store_tasks = [task for task in stream.data if str(task["key"]).startswith("('store-map")]
    assert len(store_tasks) == 4 * 4  # one per 128 px block of the 510 x 510 px grid
    assert {task["worker"] for task in store_tasks} <= workers
    assert is_complete(url)
    back = open_dataset(url)
    assert back.rio.crs.to_epsg() == 32618
    assert tuple(back.rio.transform())[:6] == tuple(geobox.affine)[:6]
    assert grid_of(back) == geobox
    np.testing.assert_array_equal(back[layout.REFLECTANCE_VAR].values, ds[layout.REFLECTANCE_VAR].values)
    plain = xr.open_zarr(url, decode_coords="all", consolidated=False, storage_options=None if target == "local" else {"endpoint_url": os.environ["AWS_ENDPOINT_URL"]})
    assert plain.rio.crs.to_epsg() == 32618
    assert tuple(plain.rio.transform())[:6] == tuple(geobox.affine)[:6]


def test_scenes_across_utm_zones_share_one_grid(l1c_scene, tmp_path):
    scenes = []
    for index, (epsg, bbox, value) in enumerate([(32630, (-0.6, 45.0, 0.05, 45.3), 1000), (32631, (-0.05, 45.0, 0.6, 45.3), 2000)]):
        path = tmp_path / f"zone{epsg}.tif"
        write_utm_scene(path, epsg, bbox, value)
        geometry, bbox_lonlat = footprint_of(path)
        band = replace(l1c_scene.band("B04"), href=str(path), gsd_m=100.0, nodata=0)
        scenes.append(
            replace(
                l1c_scene,
                item_id=f"tile-{epsg}",
                datetime_utc=l1c_scene.datetime_utc + timedelta(seconds=index),
                geometry_json=geometry,
                bbox_lonlat=bbox_lonlat,
                epsg=epsg,
                bands=(band,),
            )
        )
    (observation,) = group_observations(scenes).values()
    aoi = (-0.2, 45.05, 0.4, 45.25)  # centroid east of 0 degrees, in zone 31

    geobox = plan_grid(observation, bbox_lonlat=aoi)
    ds = load_observation(observation, geobox, chunk_px=256, resampling="nearest")

    assert geobox.crs.epsg == 32631
    stored = ds[layout.REFLECTANCE_VAR].values[0]
    assert stored.shape == (geobox.height, geobox.width)
    assert (stored != layout.REFLECTANCE_FILL).all()
    assert set(np.unique(stored).tolist()) == {1000, 2000}
    west_column = geobox.width // 10
    east_column = geobox.width - geobox.width // 10
    assert (stored[:, west_column] == 1000).all()
    assert (stored[:, east_column] == 2000).all()


@pytest.fixture
def gaofen_scene(gaofen_dir, tmp_path):
    """A Gaofen-2 MSS Level-1A scene, 20 times smaller than the real one, through a local STAC item."""
    from catalog import describe_item
    from catalog.gaofen import RadianceCalibration, build_gaofen_items

    folder, values = write_decimated_gf2_delivery(gaofen_dir, tmp_path / "delivery", factor=20)
    calibration = {"MSS": [RadianceCalibration(gain=0.2, bias=0.0, esun=1900.0)] * 4}
    (item,) = build_gaofen_items([folder], tmp_path / "catalog", calibration=calibration)
    return describe_item(item), folder, values


def test_gaofen_l1a_placed_through_rpcs(gaofen_scene):
    from rasterio.transform import RPCTransformer

    scene, folder, values = gaofen_scene
    geobox = plan_grid([scene], resolution_m=64)

    ds = load_observation([scene], geobox, bands=["B1"], chunk_px=256, resampling="nearest")

    assert not scene.map_projected
    assert geobox.crs.epsg == 32615
    stored = ds[layout.REFLECTANCE_VAR].values[0]
    band = scene.band("B1")
    with rasterio.open(folder / f"{GF2_MSS_STEM}.tiff") as src:
        rpcs = src.rpcs
    block_rows = np.arange(8, values.shape[0] - 8, 24)
    block_columns = np.arange(8, values.shape[1] - 8, 24)
    rows, columns = (grid.ravel() for grid in np.meshgrid(block_rows + 1, block_columns + 1, indexing="ij"))
    with RPCTransformer(rpcs) as transformer:
        lons, lats = transformer.xy(rows, columns, offset="lr")  # the centre of each 4 x 4 block
    xs, ys = rasterio.warp.transform("EPSG:4326", "EPSG:32615", lons, lats)
    grid_columns, grid_rows = ~geobox.affine @ (np.asarray(xs), np.asarray(ys))
    placed = stored[grid_rows.astype(int), grid_columns.astype(int)]
    expected = encode_reflectance(values[rows, columns] * band.scale + band.offset)
    np.testing.assert_array_equal(placed, expected)
    assert (stored == layout.REFLECTANCE_FILL).any()


def test_gaofen_l1a_without_rpcs_rejected(gaofen_scene):
    scene, folder, _ = gaofen_scene
    (folder / f"{GF2_MSS_STEM}.rpb").unlink()
    geobox = plan_grid([scene], resolution_m=256)

    ds = load_observation([scene], geobox, bands=["B1"], chunk_px=256)

    with pytest.raises(NotGeoreferencedError, match="no map projection and no RPCs"):
        ds[layout.REFLECTANCE_VAR].compute()


def test_write_input_cube_rejects_decoded_floats(l2a_scene, l2a_dir, tmp_path):
    ds = load_observation([l2a_scene], source_geobox(l2a_dir / "B04.tif"), bands=["B04"], chunk_px=512)
    decoded = ds.assign({layout.REFLECTANCE_VAR: decode_reflectance(ds[layout.REFLECTANCE_VAR])})

    with pytest.raises(ValueError, match="'reflectance' is float32, but the input cube stores int16"):
        write_input_cube(decoded, str(tmp_path / "cube.zarr"))


def test_assets_on_s3_read_by_cluster_workers(l1c_scene, l1c_dir, cluster_client, s3_bucket, tmp_path):
    import boto3

    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    for name in ("B02", "B05"):
        client.upload_file(str(l1c_dir / f"{name}.tif"), s3_bucket, f"scene/{name}.tif")
    bands = tuple(replace(l1c_scene.band(name), href=f"s3://{s3_bucket}/scene/{name}.tif") for name in ("B02", "B05"))
    remote = replace(l1c_scene, bands=bands)
    geobox = plan_grid([remote], resolution_m=20)
    url = str(tmp_path / "cube.zarr")

    write_input_cube(load_observation([remote], geobox, chunk_px=256), url, client=cluster_client)

    expected = load_observation([replace(l1c_scene, bands=tuple(l1c_scene.band(name) for name in ("B02", "B05")))], geobox, chunk_px=256)
    np.testing.assert_array_equal(open_dataset(url)[layout.REFLECTANCE_VAR].values, expected[layout.REFLECTANCE_VAR].values)


def test_load_graph_small_and_deterministic(l1c_scene):
    import pickle

    geobox = plan_grid([l1c_scene])

    first = load_observation([l1c_scene], geobox, chunk_px=256)[layout.REFLECTANCE_VAR].data
    second = load_observation([l1c_scene], geobox, chunk_px=256)[layout.REFLECTANCE_VAR].data
    other = load_observation([l1c_scene], geobox, chunk_px=256, resampling="cubic")[layout.REFLECTANCE_VAR].data

    assert first.name == second.name
    assert first.name != other.name
    graph = dict(first.__dask_graph__())
    assert len(graph) == 4 * 4
    assert len(pickle.dumps(graph)) < 64 * 1024
