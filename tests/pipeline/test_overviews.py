"""Tests of the overview pyramid: reductions, level shapes, grids and the multiscales attribute."""

from __future__ import annotations

import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
import zarr
from synthetic_predictions import LEGEND, PROVENANCE, ThreeScenes

from pipeline.completion import open_mosaic
from pipeline.mosaic import MosaicOptions, build_mosaic
from pipeline.overviews import downsample_mean, downsample_mode, overview_shapes


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        ([[1, 1], [2, 3]], [[1]]),
        ([[3, 2], [2, 3]], [[2]]),  # tie: lowest class id
        ([[255, 255], [255, 4]], [[4]]),  # nodata never wins over a class
        ([[255, 255], [255, 255]], [[255]]),
        ([[0, 0, 5], [0, 1, 5]], [[0, 5]]),  # odd width: the edge window has one column
    ],
)
def test_downsample_mode_table(block: list[list[int]], expected: list[list[int]]) -> None:
    result = downsample_mode(np.array(block, dtype=np.uint8), class_ids=(0, 1, 2, 3, 4, 5), nodata=255)
    np.testing.assert_array_equal(result, np.array(expected, dtype=np.uint8))
    assert result.dtype == np.uint8


@pytest.mark.parametrize(
    ("block", "nodata", "expected"),
    [
        ([[10, 20], [30, 40]], 255, [[25]]),
        ([[10, 255], [255, 255]], 255, [[10]]),
        ([[255, 255], [255, 255]], 255, [[255]]),
        ([[1, 2, 9], [3, 4, 9]], 255, [[2, 9]]),  # 2.5 rounds to even
        ([[0, 0], [1, 1]], None, [[0]]),  # counts: no nodata, 0.5 rounds to even
    ],
)
def test_downsample_mean_table(block: list[list[int]], nodata: int | None, expected: list[list[int]]) -> None:
    result = downsample_mean(np.array(block, dtype=np.uint8), nodata)
    np.testing.assert_array_equal(result, np.array(expected, dtype=np.uint8))


@pytest.mark.parametrize(
    ("shape", "min_size", "expected"),
    [
        ((96, 80), 16, [(48, 40), (24, 20), (12, 10)]),
        ((1000, 3), 256, [(500, 2), (250, 1)]),
        ((100, 100), 256, []),
        ((257, 1), 256, [(129, 1)]),
    ],
)
def test_overview_shapes_table(shape: tuple[int, int], min_size: int, expected: list[tuple[int, int]]) -> None:
    assert overview_shapes(shape, min_size) == expected


def test_overview_shapes_rejects_zero() -> None:
    with pytest.raises(ValueError, match="min_size_px is 0"):
        overview_shapes((10, 10), 0)


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory: pytest.TempPathFactory) -> tuple[ThreeScenes, str]:
    folder = tmp_path_factory.mktemp("pyramid")
    scenes = ThreeScenes(folder / "predictions")
    url = str(folder / "mosaic.zarr")
    build_mosaic(scenes.urls, url, legend=LEGEND, provenance=PROVENANCE,
                 options=MosaicOptions(chunk_px=32, overview_min_px=16))
    return scenes, url


def test_overview_levels_have_expected_shapes_and_grids(pyramid: tuple[ThreeScenes, str]) -> None:
    scenes, url = pyramid
    geobox = scenes.geobox
    for level, shape in enumerate([(96, 80), (48, 40), (24, 20), (12, 10)]):
        dataset = open_mosaic(url, level=level)
        assert dataset["landcover"].shape == shape
        assert dataset.rio.crs == geobox.crs.proj
        expected = geobox if level == 0 else geobox.zoom_out(2**level)
        assert dataset.rio.transform() == expected.affine
        assert dataset.rio.bounds() == pytest.approx(tuple(expected.extent.boundingbox))


def test_overview_level_one_values(pyramid: tuple[ThreeScenes, str]) -> None:
    _, url = pyramid
    full = open_mosaic(url).load()
    half = open_mosaic(url, level=1).load()

    windows = full["landcover"].values.reshape(48, 2, 40, 2).transpose(0, 2, 1, 3).reshape(48, 40, 4)
    expected_mode = np.full((48, 40), 255, dtype=np.uint8)
    for row in range(48):
        for col in range(40):
            values = [value for value in windows[row, col] if value != 255]
            if values:
                counts = np.bincount(values, minlength=4)
                expected_mode[row, col] = int(np.argmax(counts))
    np.testing.assert_array_equal(half["landcover"].values, expected_mode)

    cloud = full["cloud_probability"].values.astype(float)
    expected_cloud = np.rint(cloud.reshape(48, 2, 40, 2).mean(axis=(1, 3)))
    np.testing.assert_array_equal(half["cloud_probability"].values, expected_cloud.astype(np.uint8))
    # rows 0-31 of the full grid are nodata in land cover, so rows 0-15 here
    assert (half["landcover"].values[:16] == 255).all()
    assert (half["landcover"].values[16:] != 255).all()


def test_overview_attrs_follow_multiscales_convention(pyramid: tuple[ThreeScenes, str]) -> None:
    scenes, url = pyramid
    attrs = zarr.open_group(url, mode="r").attrs.asdict()
    assert attrs["zarr_conventions"][0]["name"] == "multiscales"
    layout = attrs["multiscales"]["layout"]

    assert [entry["asset"] for entry in layout] == [".", "1", "2", "3"]
    assert [entry.get("derived_from") for entry in layout] == [None, ".", "1", "2"]
    assert all(entry["transform"]["scale"] == [2.0, 2.0] for entry in layout[1:])
    assert layout[0]["proj:shape"] == [96, 80]
    assert layout[3]["proj:shape"] == [12, 10]
    assert layout[0]["proj:transform"] == list(scenes.geobox.affine.to_gdal())
    assert attrs["multiscales"]["variable_resampling_methods"]["landcover"] == "mode"
    assert attrs["multiscales"]["variable_resampling_methods"]["cloud_probability"] == "average"


def test_overview_groups_open_with_plain_xarray(pyramid: tuple[ThreeScenes, str]) -> None:
    _, url = pyramid
    level = xr.open_zarr(url, group="2", decode_coords="all", consolidated=False)
    assert level["landcover"].dtype == np.uint8
    assert level["landcover"].attrs["flag_values"] == [0, 1, 2, 3]
    assert level["landcover"].rio.nodata == 255
