"""Tests of the mosaic stage on three overlapping synthetic scenes with known clouds."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
import zarr
from synthetic_predictions import CLASS_IDS, LEGEND, PROVENANCE, ThreeScenes, job_geobox, probabilities_for, write_prediction

from pipeline.completion import IncompleteStoreError, is_complete, open_mosaic
from pipeline.mosaic import MosaicOptions, build_mosaic, class_histogram, describe_mosaic

OPTIONS = MosaicOptions(chunk_px=32, overview_min_px=16)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> ThreeScenes:
    return ThreeScenes(tmp_path_factory.mktemp("predictions"))


@pytest.fixture(scope="module")
def mosaic_url(scenes: ThreeScenes, tmp_path_factory: pytest.TempPathFactory) -> str:
    url = str(tmp_path_factory.mktemp("mosaic") / "mosaic.zarr")
    return build_mosaic(scenes.urls, url, legend=LEGEND, provenance=PROVENANCE, options=OPTIONS)


@pytest.fixture(scope="module")
def mosaic(mosaic_url: str) -> xr.Dataset:
    return open_mosaic(mosaic_url).load()


def _regions(scenes: ThreeScenes) -> dict[str, np.ndarray]:
    rows = np.arange(scenes.height)[:, np.newaxis]
    cols = np.arange(scenes.width)[np.newaxis, :]
    shape = (scenes.height, scenes.width)
    middle = np.broadcast_to((rows >= 32) & (rows < 48), shape)
    bottom = np.broadcast_to(rows >= 48, shape)
    left = np.broadcast_to(cols < 60, shape)
    return {
        "all_cloudy": scenes.cloudy_everywhere,
        "only_a": scenes.only_a_clear,
        "a_and_b": middle & left,
        "a_b_c": bottom & left,
        "a_and_c": bottom & ~left,
    }


def test_mosaic_takes_landcover_from_clear_observations(scenes: ThreeScenes, mosaic: xr.Dataset) -> None:
    regions = _regions(scenes)
    landcover = mosaic["landcover"].values
    clear_somewhere = ~regions["all_cloudy"]

    # Observation b predicts another class in columns 60+, but it is cloudy there.
    np.testing.assert_array_equal(landcover[clear_somewhere], scenes.truth[clear_somewhere])
    np.testing.assert_array_equal(landcover[regions["only_a"]], scenes.truth[regions["only_a"]])


def test_mosaic_reports_cloud_where_all_cloudy(scenes: ThreeScenes, mosaic: xr.Dataset) -> None:
    cloudy = _regions(scenes)["all_cloudy"]
    assert (mosaic["landcover"].values[cloudy] == 255).all()
    assert (mosaic["landcover_confidence"].values[cloudy] == 255).all()
    # The lowest cloud probability seen there (observation b, 80 %) explains the gap.
    assert (mosaic["cloud_probability"].values[cloudy] == 80).all()
    assert (mosaic["clear_observations"].values[cloudy] == 0).all()
    assert (mosaic["valid_observations"].values[cloudy] == 2).all()


@pytest.mark.parametrize(
    ("region", "clear", "valid", "cloud"),
    [
        ("only_a", 1, 2, 5),
        ("a_and_b", 2, 2, 12),  # (0.95 * 5 + 0.8 * 20) / 1.75 = 11.86
        ("a_b_c", 3, 3, 11),  # (0.95 * 5 + 0.8 * 20 + 0.9 * 10) / 2.65 = 11.23
        ("a_and_c", 2, 3, 7),  # (0.95 * 5 + 0.9 * 10) / 1.85 = 7.43
    ],
)
def test_mosaic_counts_observations(scenes: ThreeScenes, mosaic: xr.Dataset, region: str, clear: int, valid: int, cloud: int) -> None:
    mask = _regions(scenes)[region]
    assert (mosaic["clear_observations"].values[mask] == clear).all()
    assert (mosaic["valid_observations"].values[mask] == valid).all()
    assert (mosaic["cloud_probability"].values[mask] == cloud).all()
    assert (mosaic["landcover_confidence"].values[mask] == 70).all()


def test_mosaic_least_cloudy_picks_clearest(scenes: ThreeScenes, tmp_path) -> None:
    url = str(tmp_path / "least.zarr")
    options = MosaicOptions(method="least-cloudy", chunk_px=32, overview_min_px=16)
    build_mosaic(scenes.urls, url, legend=LEGEND, provenance=PROVENANCE, options=options)
    result = open_mosaic(url).load()
    clear = ~scenes.cloudy_everywhere

    np.testing.assert_array_equal(result["landcover"].values[clear], scenes.truth[clear])
    assert (result["cloud_probability"].values[clear] == 5).all()  # observation a everywhere
    assert (result["landcover"].values[scenes.cloudy_everywhere] == 255).all()


def test_least_cloudy_needs_no_class_probabilities(scenes: ThreeScenes, tmp_path) -> None:
    urls = []
    for url in scenes.urls:
        copy = tmp_path / "labels" / url.rstrip("/").rsplit("/", 1)[-1]
        shutil.copytree(url, copy)
        del zarr.open_group(str(copy), mode="r+")["landcover_probability"]
        urls.append(str(copy))
    options = MosaicOptions(method="least-cloudy", chunk_px=32, overview_min_px=16)
    build_mosaic(scenes.urls, str(tmp_path / "full.zarr"), legend=LEGEND, provenance=PROVENANCE, options=options)
    build_mosaic(urls, str(tmp_path / "labels.zarr"), legend=LEGEND, provenance=PROVENANCE, options=options)

    full, labels = open_mosaic(str(tmp_path / "full.zarr")).load(), open_mosaic(str(tmp_path / "labels.zarr")).load()
    for name in full.data_vars:
        np.testing.assert_array_equal(labels[name].values, full[name].values, err_msg=name)

    with pytest.raises(ValueError, match="has no 'landcover_probability'.*'least-cloudy'"):
        build_mosaic(urls, str(tmp_path / "weighted.zarr"), legend=LEGEND, provenance=PROVENANCE, options=OPTIONS)


def test_mosaic_is_deterministic(scenes: ThreeScenes, mosaic: xr.Dataset, tmp_path) -> None:
    url = str(tmp_path / "again.zarr")
    build_mosaic(list(reversed(scenes.urls)), url, legend=LEGEND, provenance=PROVENANCE, options=OPTIONS)
    again = open_mosaic(url).load()
    for name in mosaic.data_vars:
        np.testing.assert_array_equal(again[name].values, mosaic[name].values, err_msg=name)


def test_mosaic_grid_round_trips(scenes: ThreeScenes, mosaic_url: str) -> None:
    opened = xr.open_zarr(mosaic_url, decode_coords="all", consolidated=False)
    assert opened.rio.crs == scenes.geobox.crs.proj
    assert opened.rio.transform() == scenes.geobox.affine
    assert opened["landcover"].rio.nodata == 255
    assert opened["landcover"].dtype == np.uint8


def test_mosaic_class_zero_reads_as_zero(scenes: ThreeScenes, mosaic_url: str) -> None:
    url = mosaic_url
    plain = xr.open_zarr(url, decode_coords="all", consolidated=False)
    landcover = plain["landcover"].values

    assert plain["landcover"].dtype == np.uint8
    assert landcover[-1, -1] == 0
    assert (landcover == 0).sum() == ((scenes.truth == 0) & ~scenes.cloudy_everywhere).sum()
    assert plain.rio.crs == scenes.geobox.crs.proj
    assert plain.rio.transform() == scenes.geobox.affine
    assert plain["landcover"].attrs["flag_values"] == list(CLASS_IDS)
    assert plain["landcover"].attrs["flag_meanings"] == "water tree_cover cropland built_up"
    assert zarr.open_array(f"{url}/landcover", mode="r").fill_value == 255


def test_mosaic_stores_provenance(mosaic_url: str) -> None:
    attrs = open_mosaic(mosaic_url).attrs

    assert attrs["provenance"] == PROVENANCE
    assert attrs["software_version"]
    assert attrs["input_item_ids"] == ["a_item", "b_item", "c_item"]
    assert [entry["observation_id"] for entry in attrs["input_observations"]] == ["a", "b", "c"]
    assert attrs["start_datetime"] == "2024-05-01T10:00:00Z"
    assert attrs["end_datetime"] == "2024-05-21T10:00:00Z"
    assert attrs["compositing"] == {"method": "clear-weighted", "cloud_threshold_pct": 50.0}


def test_mosaic_without_cloud_layer_counts_all_clear(tmp_path) -> None:
    scenes = ThreeScenes(tmp_path / "predictions", with_cloud=False)
    url = str(tmp_path / "nocloud.zarr")
    build_mosaic(scenes.urls, url, legend=LEGEND, provenance=PROVENANCE, options=OPTIONS)
    result = open_mosaic(url).load()

    assert (result["cloud_probability"].values == 255).all()
    np.testing.assert_array_equal(result["clear_observations"].values, result["valid_observations"].values)
    # Without clouds, b's different classes in columns 60+ get equal weight
    # as a's, so that region is a tie that goes to the lower class index.
    clear_of_b = np.zeros_like(scenes.truth, dtype=bool)
    clear_of_b[:48, 60:] = True
    expected = np.minimum(scenes.truth, (scenes.truth + 1) % 4)
    np.testing.assert_array_equal(result["landcover"].values[clear_of_b], expected[clear_of_b])


def test_mosaic_sharded_store_round_trips(scenes: ThreeScenes, mosaic_url: str, mosaic: xr.Dataset, tmp_path) -> None:
    url = str(tmp_path / "sharded.zarr")
    options = MosaicOptions(chunk_px=16, shard_above_chunks=4, shard_factor=2, overview_min_px=16)
    build_mosaic(scenes.urls, url, legend=LEGEND, provenance=PROVENANCE, options=options)

    array = zarr.open_array(f"{url}/landcover", mode="r")
    assert array.shards == (32, 32)
    assert array.chunks == (16, 16)
    np.testing.assert_array_equal(open_mosaic(url)["landcover"].values, mosaic["landcover"].values)
    # level 1 is 48 x 40 px, 3 x 3 chunks of 16 px: more than 4, so sharded too
    assert zarr.open_array(f"{url}/1/landcover", mode="r").shards == (32, 32)
    assert zarr.open_array(f"{url}/2/landcover", mode="r").shards is None
    for level in (1, 2):
        np.testing.assert_array_equal(open_mosaic(url, level=level)["landcover"].values,
                                      open_mosaic(mosaic_url, level=level)["landcover"].values)


def test_mosaic_stores_class_pixel_counts(mosaic_url: str, mosaic: xr.Dataset) -> None:
    counts = np.bincount(mosaic["landcover"].values.ravel(), minlength=256)
    expected = {str(value): int(counts[value]) for value in np.flatnonzero(counts)}
    assert open_mosaic(mosaic_url).attrs["class_pixel_counts"] == expected
    assert expected["255"] == 32 * 80


def test_class_histogram_counts_every_block(mosaic: xr.Dataset) -> None:
    landcover = mosaic["landcover"].chunk({"y": 40, "x": 30}).data
    expected = np.bincount(mosaic["landcover"].values.ravel(), minlength=256)
    np.testing.assert_array_equal(class_histogram(landcover).compute(), expected)


def test_describe_mosaic_summarises_store(scenes: ThreeScenes, mosaic_url: str) -> None:
    summary = describe_mosaic(mosaic_url)

    assert summary["complete"] is True
    assert summary["grid"]["epsg"] == 32618
    assert summary["grid"]["shape"] == [96, 80]
    assert summary["grid"]["resolution_m"] == [10.0, 10.0]
    assert summary["grid"]["bounds"] == list(scenes.geobox.extent.boundingbox)
    assert set(summary["layers"]) == {"landcover", "landcover_confidence", "cloud_probability", "clear_observations", "valid_observations"}
    assert sum(summary["class_shares_pct"].values()) == pytest.approx(100.0, abs=0.01)
    assert summary["nodata_pct"] == pytest.approx(100.0 * 32 / 96, abs=0.01)
    assert summary["overview_levels"] == 3
    assert summary["provenance"] == PROVENANCE


def test_build_mosaic_rejects_empty_input(tmp_path) -> None:
    with pytest.raises(ValueError, match="non-empty list of prediction store URLs"):
        build_mosaic([], str(tmp_path / "m.zarr"), legend=LEGEND, provenance={}, options=OPTIONS)


def test_build_mosaic_rejects_other_grid(scenes: ThreeScenes, tmp_path) -> None:
    other = job_geobox(scenes.height, scenes.width, resolution_m=20.0)
    url = write_prediction(tmp_path / "other.zarr", other, observation_id="d", datetime="2024-06-01T00:00:00Z",
                           probabilities=probabilities_for(scenes.truth), cloud=None)
    with pytest.raises(ValueError, match="every prediction of a job must be on the job grid"):
        build_mosaic([*scenes.urls, url], str(tmp_path / "m.zarr"), legend=LEGEND, provenance={}, options=OPTIONS)


def test_build_mosaic_rejects_legend_mismatch(scenes: ThreeScenes, tmp_path) -> None:
    with pytest.raises(ValueError, match="4 class planes .* legend has ids \\[0, 1, 2\\]"):
        build_mosaic(scenes.urls, str(tmp_path / "m.zarr"), legend=LEGEND[:3], provenance={}, options=OPTIONS)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "median"}, "method is 'median'"),
        ({"cloud_threshold_pct": 0}, "cloud_threshold_pct is 0"),
        ({"cloud_threshold_pct": 120}, "cloud_threshold_pct is 120"),
        ({"chunk_px": 15}, "chunk_px is 15"),
        ({"zstd_level": 40}, "zstd_level is 40"),
    ],
)
def test_mosaic_options_reject_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MosaicOptions(**kwargs)


def test_open_mosaic_rejects_missing_level(mosaic_url: str) -> None:
    with pytest.raises(ValueError, match="has levels 0 to 3"):
        open_mosaic(mosaic_url, level=4)


def test_open_mosaic_rejects_missing_store(tmp_path) -> None:
    assert not is_complete(str(tmp_path / "nothing.zarr"))
    with pytest.raises(IncompleteStoreError, match="is not complete"):
        open_mosaic(str(tmp_path / "nothing.zarr"))


def test_mosaic_reads_observation_attrs_from_input_cubes(tmp_path) -> None:
    geobox = job_geobox(32, 32)
    classes = np.zeros((32, 32), dtype=np.uint8)
    urls = []
    for observation_id, when in (("s2_late", "2024-06-02T10:00:00Z"), ("s2_early", "2024-06-01T10:00:00Z")):
        cube = zarr.open_group(str(tmp_path / "inputs" / f"{observation_id}.zarr"), mode="w", zarr_format=3)
        cube.attrs.update({"observation_id": observation_id, "datetime": when, "item_ids": [f"{observation_id}_item"]})
        urls.append(write_prediction(tmp_path / "predictions" / f"{observation_id}.zarr", geobox,
                                     observation_id=observation_id, datetime=when,
                                     probabilities=probabilities_for(classes), cloud=None, observation_attrs=False))

    url = build_mosaic(urls, str(tmp_path / "mosaic.zarr"), legend=LEGEND, provenance={}, options=OPTIONS)
    attrs = open_mosaic(url).attrs
    assert attrs["start_datetime"] == "2024-06-01T10:00:00Z"
    assert attrs["end_datetime"] == "2024-06-02T10:00:00Z"
    assert attrs["input_item_ids"] == ["s2_early_item", "s2_late_item"]
    assert [entry["observation_id"] for entry in attrs["input_observations"]] == ["s2_early", "s2_late"]
    assert attrs["input_observations"][0]["cards"]["landcover"] == {"card": "tiny-test", "fingerprint": "ab" * 32}


def test_build_mosaic_rejects_store_without_time(tmp_path) -> None:
    url = write_prediction(tmp_path / "predictions" / "lost.zarr", job_geobox(32, 32), observation_id="lost",
                           datetime="", probabilities=probabilities_for(np.zeros((32, 32), dtype=np.uint8)),
                           cloud=None, observation_attrs=False)
    with pytest.raises(ValueError, match="has no datetime attribute, and neither has an input cube"):
        build_mosaic([url], str(tmp_path / "mosaic.zarr"), legend=LEGEND, provenance={}, options=OPTIONS)


@pytest.mark.parametrize(("class_coordinate", "expected_id"), [(True, 0), (False, 2)])
def test_mosaic_maps_planes_to_class_ids(tmp_path, class_coordinate: bool, expected_id: int) -> None:
    planes = np.zeros((32, 32), dtype=np.uint8)  # the model's plane 0 wins everywhere
    url = write_prediction(tmp_path / "p.zarr", job_geobox(32, 32), observation_id="p", datetime="2024-06-01T10:00:00Z",
                           probabilities=probabilities_for(planes), cloud=None, class_coordinate=class_coordinate)
    reordered = [LEGEND[2], LEGEND[0], LEGEND[1], LEGEND[3]]
    result = open_mosaic(build_mosaic([url], str(tmp_path / "m.zarr"), legend=reordered, provenance={}, options=OPTIONS))

    # The class coordinate names the plane's class id; without it, the legend order does.
    assert (result["landcover"].values == expected_id).all()
    assert result["landcover"].attrs["flag_values"] == [2, 0, 1, 3]
