"""Tests of the completion record that marks a finished store."""

from __future__ import annotations

from pathlib import Path

import pytest
import zarr

from pipeline.completion import (
    COMPLETION_ATTR,
    IncompleteStoreError,
    clear_complete,
    completion_info,
    is_complete,
    mark_complete,
    require_complete,
)


def _empty_store(path: Path) -> str:
    zarr.open_group(str(path), mode="w", zarr_format=3).attrs["title"] = "test"
    return str(path)


def test_store_is_incomplete_until_marked(tmp_path: Path) -> None:
    url = _empty_store(tmp_path / "store.zarr")
    assert not is_complete(url)
    with pytest.raises(IncompleteStoreError, match="no 'fleximo_completion' attribute"):
        require_complete(url)

    mark_complete(url, {"layers": ["landcover"]})
    assert is_complete(url)
    require_complete(url)
    info = completion_info(url)
    assert info["layers"] == ["landcover"]
    assert info["completed_at"].endswith("+00:00")
    assert zarr.open_group(url, mode="r").attrs["title"] == "test"


def test_clear_complete_removes_record(tmp_path: Path) -> None:
    url = _empty_store(tmp_path / "store.zarr")
    mark_complete(url, {})
    clear_complete(url)
    assert not is_complete(url)
    assert COMPLETION_ATTR not in zarr.open_group(url, mode="r").attrs
    clear_complete(url)  # a store without a record stays as it is
    assert not is_complete(url)


def test_missing_store_is_incomplete(tmp_path: Path) -> None:
    url = str(tmp_path / "missing.zarr")
    assert not is_complete(url)
    with pytest.raises(IncompleteStoreError, match="missing.zarr' is not complete"):
        completion_info(url)
