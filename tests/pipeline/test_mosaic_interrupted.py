"""A mosaic write that stops halfway is not reported complete, and a rerun completes it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from synthetic_predictions import LEGEND, PROVENANCE, ThreeScenes

from pipeline.completion import IncompleteStoreError, completion_info, is_complete, open_mosaic
from pipeline.exports import export_cogs
from pipeline.mosaic import MosaicOptions, build_mosaic, describe_mosaic

OPTIONS = MosaicOptions(chunk_px=32, overview_min_px=16)


def _corrupt_chunk(store: Path, relative: str) -> bytes:
    chunk = store / relative
    original = chunk.read_bytes()
    chunk.write_bytes(b"not a compressed chunk" * 4)
    return original


def test_interrupted_mosaic_is_incomplete_then_rerun_completes(tmp_path: Path) -> None:
    scenes = ThreeScenes(tmp_path / "predictions")
    url = str(tmp_path / "mosaic.zarr")

    # The block in chunk row 1, column 1 of observation a cannot be read, so
    # the write fails after the metadata and some blocks are on disk.
    probabilities = Path(scenes.urls[1]) / "landcover_probability"
    original = _corrupt_chunk(probabilities, "c/0/1/1")
    with pytest.raises(RuntimeError, match="decompression"):
        build_mosaic(scenes.urls, url, legend=LEGEND, provenance=PROVENANCE, options=OPTIONS)

    assert Path(url, "zarr.json").exists()
    assert not is_complete(url)
    with pytest.raises(IncompleteStoreError, match="is not complete.*rerun the stage"):
        open_mosaic(url)
    with pytest.raises(IncompleteStoreError, match="is not complete"):
        export_cogs(url, tmp_path / "exports")
    # The failed block was never written, so it reads as nodata, not as class 0.
    partial = xr.open_zarr(url, consolidated=False)["landcover"].values
    assert (partial[32:64, 32:64] == 255).all()

    (probabilities / "c/0/1/1").write_bytes(original)
    build_mosaic(scenes.urls, url, legend=LEGEND, provenance=PROVENANCE, options=OPTIONS)

    assert is_complete(url)
    assert completion_info(url)["overview_levels"] == 3
    landcover = open_mosaic(url)["landcover"].values
    clear = ~scenes.cloudy_everywhere
    np.testing.assert_array_equal(landcover[clear], scenes.truth[clear])


def test_failed_rewrite_of_complete_mosaic_is_incomplete(tmp_path: Path) -> None:
    scenes = ThreeScenes(tmp_path / "predictions")
    url = str(tmp_path / "mosaic.zarr")
    build_mosaic(scenes.urls, url, legend=LEGEND, provenance=PROVENANCE, options=OPTIONS)
    assert is_complete(url)

    # A rerun that fails midway must not leave the old completion record
    # behind, because the store then holds blocks of two runs.
    _corrupt_chunk(Path(scenes.urls[2]) / "landcover", "c/2/0")
    with pytest.raises(RuntimeError, match="decompression"):
        build_mosaic(scenes.urls, url, legend=LEGEND, provenance=PROVENANCE, options=OPTIONS)
    assert not is_complete(url)


def test_rejected_inputs_leave_complete_mosaic_untouched(tmp_path: Path) -> None:
    scenes = ThreeScenes(tmp_path / "predictions")
    url = str(tmp_path / "mosaic.zarr")
    build_mosaic(scenes.urls, url, legend=LEGEND, provenance=PROVENANCE, options=OPTIONS)
    before = open_mosaic(url)["landcover"].values

    shutil.rmtree(Path(scenes.urls[0]) / "landcover")
    with pytest.raises(ValueError, match="lacks \\['landcover'\\]"):
        build_mosaic(scenes.urls, url, legend=LEGEND, provenance=PROVENANCE, options=OPTIONS)
    assert is_complete(url)
    np.testing.assert_array_equal(open_mosaic(url)["landcover"].values, before)


def test_describe_mosaic_reports_incomplete_store(tmp_path: Path) -> None:
    scenes = ThreeScenes(tmp_path / "predictions")
    url = str(tmp_path / "mosaic.zarr")
    _corrupt_chunk(Path(scenes.urls[1]) / "landcover_confidence", "c/0/0")
    with pytest.raises(RuntimeError, match="decompression"):
        build_mosaic(scenes.urls, url, legend=LEGEND, provenance=PROVENANCE, options=OPTIONS)

    summary = describe_mosaic(url)
    assert summary["complete"] is False
    assert summary["grid"]["shape"] == [96, 80]
    assert "class_shares_pct" not in summary
