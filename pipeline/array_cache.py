"""Per-process cache of the Zarr arrays that block tasks open, one entry per array and run.

Opening an array reads the metadata of its group and of the array. On a
local disk that took 2-4 ms of waiting per block task for zarr's event loop
thread, and on an object store it is one request per metadata document.
Every block task of a run opens the same input cube and prediction store
arrays, so each worker process opens them once per run and keeps them.

Entries are keyed by a run token, so a later run opens the stores again and
reads metadata that was rewritten in between. Without a token nothing is
cached.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import zarr

from pipeline.stores import StoreMode, zarr_store

MAX_ENTRIES = 32
"""Maximum number of arrays kept. The least recently used are dropped first."""

_entries: OrderedDict[tuple[str, ...], zarr.Array] = OrderedDict()
_lock = threading.Lock()


def open_array(url: str, name: str, mode: StoreMode, storage_options: dict[str, Any], run: str | None) -> zarr.Array:
    """Return the array ``name`` of the Zarr group at ``url``, opened once per ``run`` in this process."""
    key = (url, name, mode, repr(sorted(storage_options.items())), run or "")
    if run:
        with _lock:
            array = _entries.get(key)
            if array is not None:
                _entries.move_to_end(key)
                return array
    store = zarr_store(url, mode, storage_options=storage_options)
    array = zarr.open_group(store, mode=mode)[name]
    if run:
        with _lock:
            _entries[key] = array
            while len(_entries) > MAX_ENTRIES:
                _entries.popitem(last=False)
    return array


def clear() -> None:
    """Forget every opened array."""
    with _lock:
        _entries.clear()
