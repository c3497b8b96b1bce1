"""Tests of the COG exports: GDAL reads them on the mosaic grid, and they are valid COGs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rioxarray  # noqa: F401  (registers the .rio accessor)
from rasterio.enums import Resampling
from synthetic_predictions import LEGEND, PROVENANCE, job_geobox, probabilities_for, write_prediction

from pipeline.completion import open_mosaic
from pipeline.exports import InvalidCOGError, export_cogs, validate_cog
from pipeline.mosaic import MosaicOptions, build_mosaic


@pytest.fixture(scope="module")
def mosaic_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 640 x 600 mosaic (larger than one COG tile) with a cloudy band of nodata."""
    folder = tmp_path_factory.mktemp("exports")
    geobox = job_geobox(640, 600)
    rng = np.random.default_rng(11)
    classes = rng.integers(0, 4, size=(640, 600))
    classes[:, :300] = classes[:, :300] // 2 * 2  # large areas of class 0 and 2
    cloud = np.where(np.arange(640)[:, np.newaxis] < 64, 95, 15).astype(np.uint8).repeat(600, axis=1)
    url = write_prediction(folder / "p.zarr", geobox, observation_id="p", datetime="2024-05-01T10:00:00Z",
                           probabilities=probabilities_for(classes), cloud=cloud, chunk_px=128)
    mosaic = str(folder / "mosaic.zarr")
    return build_mosaic([url], mosaic, legend=LEGEND, provenance=PROVENANCE,
                        options=MosaicOptions(chunk_px=128, overview_min_px=128))


@pytest.fixture(scope="module")
def cogs(mosaic_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return export_cogs(mosaic_url, tmp_path_factory.mktemp("cogs"))


def test_export_cogs_names_files(cogs: dict[str, Path]) -> None:
    assert set(cogs) == {"landcover_cog", "cloud_probability_cog"}
    assert cogs["landcover_cog"].name == "landcover.tif"
    assert not list(cogs["landcover_cog"].parent.glob(".*staging*"))


@pytest.mark.parametrize("layer", ["landcover", "cloud_probability"])
def test_cog_matches_mosaic_grid_and_values(mosaic_url: str, cogs: dict[str, Path], layer: str) -> None:
    mosaic = open_mosaic(mosaic_url)
    with rasterio.open(cogs[f"{layer}_cog"]) as source:
        assert source.crs == mosaic.rio.crs
        assert source.crs.to_epsg() == 32618
        assert source.transform == mosaic.rio.transform()
        assert (source.height, source.width) == (640, 600)
        assert source.nodata == 255
        assert source.dtypes[0] == "uint8"
        np.testing.assert_array_equal(source.read(1), mosaic[layer].values)


def test_cog_keeps_class_zero_and_nodata(mosaic_url: str, cogs: dict[str, Path]) -> None:
    with rasterio.open(cogs["landcover_cog"]) as source:
        data = source.read(1)
        masked = source.read(1, masked=True)
    assert (data[:64] == 255).all()
    assert masked.mask[:64].all()
    assert (data[64:] == 0).sum() > 1000
    assert not masked.mask[64:].any()


def test_landcover_cog_carries_legend(cogs: dict[str, Path]) -> None:
    with rasterio.open(cogs["landcover_cog"]) as source:
        colormap = source.colormap(1)
        classes = json.loads(source.tags(1)["classes"])
    assert colormap[1] == (0x33, 0xA0, 0x2C, 255)
    assert colormap[255][3] == 0
    assert classes == {"0": "water", "1": "tree cover", "2": "cropland", "3": "built-up"}


def test_cogs_are_valid_with_overviews(cogs: dict[str, Path]) -> None:
    for path in cogs.values():
        validate_cog(path)
        with rasterio.open(path) as source:
            assert source.overviews(1) == [2]
            assert source.block_shapes[0] == (512, 512)
            assert source.tags(ns="IMAGE_STRUCTURE")["COMPRESSION"] == "DEFLATE"


def test_landcover_cog_overview_uses_mode(cogs: dict[str, Path]) -> None:
    with rasterio.open(cogs["landcover_cog"]) as source:
        overview = source.read(1, out_shape=(320, 300), resampling=Resampling.nearest)
    # a mean of classes 0 and 2 would invent class 1 in the left half
    assert not (overview[40:, :140] == 1).any()


def _plain_geotiff(path: Path, **profile) -> Path:
    data = np.arange(700 * 700, dtype=np.uint32).reshape(700, 700).astype(np.uint8)
    base = {"driver": "GTiff", "width": 700, "height": 700, "count": 1, "dtype": "uint8",
            "crs": "EPSG:32618", "transform": job_geobox().affine}
    with rasterio.open(path, "w", **{**base, **profile}) as destination:
        destination.write(data, 1)
    return path


def test_validate_cog_rejects_striped_tiff(tmp_path: Path) -> None:
    path = _plain_geotiff(tmp_path / "striped.tif")
    with pytest.raises(InvalidCOGError, match="expected square tiles.*has no overviews.*no COG layout"):
        validate_cog(path)


def test_validate_cog_rejects_overviews_after_data(tmp_path: Path) -> None:
    path = _plain_geotiff(tmp_path / "tiled.tif", tiled=True, blockxsize=256, blockysize=256)
    with rasterio.open(path, "r+") as dataset:
        dataset.build_overviews([2], Resampling.nearest)
    with pytest.raises(InvalidCOGError, match="an IFD .* lies after image data"):
        validate_cog(path)


def test_export_cogs_rejects_unknown_layer(mosaic_url: str, tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="has no layer \\['ndvi'\\]"):
        export_cogs(mosaic_url, tmp_path, layers=["ndvi"])
