"""Tests of the quicklook PNGs: size, legend and colours."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from synthetic_predictions import LEGEND, PROVENANCE, ThreeScenes

from pipeline.completion import IncompleteStoreError, clear_complete
from pipeline.mosaic import MosaicOptions, build_mosaic
from pipeline.quicklooks import (
    COLORBAR_WIDTH_PX,
    FONT_SIZE_PX,
    LEGEND_WIDTH_PX,
    MARGIN_PX,
    CLOUDY_RGB,
    NODATA_RGB,
    map_size_px,
    write_quicklooks,
)

MAP_TOP_PX = MARGIN_PX + FONT_SIZE_PX + 2 + MARGIN_PX


@pytest.fixture(scope="module")
def mosaic_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("quicklooks")
    scenes = ThreeScenes(folder / "predictions")
    return build_mosaic(scenes.urls, str(folder / "mosaic.zarr"), legend=LEGEND, provenance=PROVENANCE,
                        options=MosaicOptions(chunk_px=32, overview_min_px=16))


@pytest.mark.parametrize(
    ("shape", "max_size", "expected"),
    [((96, 80), 1024, (96, 80)), ((96, 80), 48, (48, 40)), ((640, 600), 200, (200, 188)), ((1, 5000), 100, (1, 100))],
)
def test_map_size_px_table(shape: tuple[int, int], max_size: int, expected: tuple[int, int]) -> None:
    assert map_size_px(shape, max_size) == expected


def test_quicklooks_have_expected_size(mosaic_url: str, tmp_path: Path) -> None:
    paths = write_quicklooks(mosaic_url, tmp_path, max_size_px=48)
    assert set(paths) == {"landcover_quicklook", "cloud_probability_quicklook"}

    with Image.open(paths["landcover_quicklook"]) as image:
        assert image.format == "PNG"
        assert image.width == MARGIN_PX + 40 + MARGIN_PX + LEGEND_WIDTH_PX + MARGIN_PX
        assert image.height >= MAP_TOP_PX + 48 + MARGIN_PX
    with Image.open(paths["cloud_probability_quicklook"]) as image:
        assert image.width == MARGIN_PX + 40 + MARGIN_PX + COLORBAR_WIDTH_PX + MARGIN_PX


def test_landcover_quicklook_legend_lists_classes(mosaic_url: str, tmp_path: Path) -> None:
    path = write_quicklooks(mosaic_url, tmp_path, attribution="Contains modified Copernicus Sentinel data")["landcover_quicklook"]
    with Image.open(path) as image:
        legend = json.loads(image.text["legend"])
        assert image.text["Copyright"] == "Contains modified Copernicus Sentinel data"
        pixels = np.asarray(image.convert("RGB"))

    names = [entry["name"] for entry in legend]
    assert names == ["water", "tree cover", "cropland", "built-up", "cloudy in every observation", "not observed"]
    assert [entry["id"] for entry in legend] == [0, 1, 2, 3, 255, 255]
    panel = pixels[:, MARGIN_PX + 80 + MARGIN_PX :]
    for _, _, colour in LEGEND:
        rgb = tuple(int(colour[index : index + 2], 16) for index in (1, 3, 5))
        assert (panel == rgb).all(axis=-1).sum() >= 100, f"legend swatch {colour} missing"


def test_landcover_quicklook_draws_map(mosaic_url: str, tmp_path: Path) -> None:
    path = write_quicklooks(mosaic_url, tmp_path)["landcover_quicklook"]
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    drawn = pixels[MAP_TOP_PX : MAP_TOP_PX + 96, MARGIN_PX : MARGIN_PX + 80]
    # rows 0-31 are cloudy in every observation that saw them
    assert (drawn[:32] == CLOUDY_RGB).all()
    assert not (drawn == NODATA_RGB).all(axis=-1).any()
    colours = {tuple(int(entry[2][index : index + 2], 16) for index in (1, 3, 5)) for entry in LEGEND}
    assert {tuple(pixel) for pixel in drawn[32:].reshape(-1, 3)} == colours


def test_cloud_quicklook_describes_ramp(mosaic_url: str, tmp_path: Path) -> None:
    path = write_quicklooks(mosaic_url, tmp_path)["cloud_probability_quicklook"]
    with Image.open(path) as image:
        legend = json.loads(image.text["legend"])
    assert [stop["percent"] for stop in legend["ramp"]] == [0.0, 50.0, 100.0]
    assert legend["nodata"]["value"] == 255


def test_quicklooks_reject_incomplete_store(tmp_path: Path) -> None:
    scenes = ThreeScenes(tmp_path / "predictions")
    url = build_mosaic(scenes.urls, str(tmp_path / "mosaic.zarr"), legend=LEGEND, provenance=PROVENANCE,
                       options=MosaicOptions(chunk_px=32, overview_min_px=16))
    clear_complete(url)
    with pytest.raises(IncompleteStoreError, match="is not complete"):
        write_quicklooks(url, tmp_path / "png")


def test_quicklooks_reject_tiny_size(mosaic_url: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_size_px is 4"):
        write_quicklooks(mosaic_url, tmp_path, max_size_px=4)
