"""Arrays opened once per run and process, and opened again for a new run."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from pipeline import array_cache


@pytest.fixture(autouse=True)
def empty_cache():
    array_cache.clear()
    yield
    array_cache.clear()


def _write_group(path, shape) -> None:
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.create_array("values", shape=shape, chunks=shape, dtype="int16", fill_value=0)


def test_same_run_reuses_array(tmp_path):
    _write_group(tmp_path / "s.zarr", (4, 4))

    first = array_cache.open_array(str(tmp_path / "s.zarr"), "values", "r", {}, "run-1")
    second = array_cache.open_array(str(tmp_path / "s.zarr"), "values", "r", {}, "run-1")

    assert second is first


def test_new_run_reads_rewritten_store(tmp_path):
    url = str(tmp_path / "s.zarr")
    _write_group(tmp_path / "s.zarr", (4, 4))
    assert array_cache.open_array(url, "values", "r", {}, "run-1").shape == (4, 4)

    _write_group(tmp_path / "s.zarr", (6, 3))

    assert array_cache.open_array(url, "values", "r", {}, "run-1").shape == (4, 4)
    assert array_cache.open_array(url, "values", "r", {}, "run-2").shape == (6, 3)


def test_without_run_nothing_kept(tmp_path):
    url = str(tmp_path / "s.zarr")
    _write_group(tmp_path / "s.zarr", (4, 4))

    first = array_cache.open_array(url, "values", "r", {}, None)
    second = array_cache.open_array(url, "values", "r", {}, "")

    assert second is not first
    assert array_cache._entries == {}


def test_modes_are_separate_entries(tmp_path):
    url = str(tmp_path / "s.zarr")
    _write_group(tmp_path / "s.zarr", (4, 4))

    read_only = array_cache.open_array(url, "values", "r", {}, "run-1")
    writable = array_cache.open_array(url, "values", "r+", {}, "run-1")
    writable[:2, :2] = 7

    assert writable is not read_only
    assert np.array_equal(read_only[:2, :2], np.full((2, 2), 7, np.int16))
    with pytest.raises(ValueError, match="read-only"):
        read_only[:1, :1] = 1


def test_oldest_entries_dropped(tmp_path, monkeypatch):
    monkeypatch.setattr(array_cache, "MAX_ENTRIES", 2)
    url = str(tmp_path / "s.zarr")
    _write_group(tmp_path / "s.zarr", (4, 4))

    first = array_cache.open_array(url, "values", "r", {}, "run-1")
    array_cache.open_array(url, "values", "r", {}, "run-2")
    array_cache.open_array(url, "values", "r", {}, "run-3")

    assert len(array_cache._entries) == 2
    assert array_cache.open_array(url, "values", "r", {}, "run-1") is not first


def test_missing_store_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="no Zarr store at"):
        array_cache.open_array(str(tmp_path / "missing.zarr"), "values", "r", {}, "run-1")
