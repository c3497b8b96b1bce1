"""Per-process cache of decoded cube chunks that a block's neighbours read again.

A block task reads its block plus a halo of less than one tile below and to
the right. The halo lies in chunks that the neighbouring blocks own, and
zarr decodes a whole chunk for any part of it, so without a cache each halo
chunk is decoded twice or four times. With it, the block that reads a chunk
as halo keeps the decoded chunk, and the chunk's last reader takes it out of
the cache. Each block runs after the blocks above it and to its left (see
:meth:`pipeline.tiling.BlockPlan.in_row_pairs`) and halos reach down and
right, so the last reader is the block that holds the chunk's last pixel.
Each read passes a byte limit, and past it the oldest entries go, so the
callers bound memory by the limit they pass. A read can also leave out the
chunks that only the next row of blocks reads, on scenes where they would be
evicted before that row reads them.

Entries belong to one run: a read of another run first drops them all, so a
run never reads chunks of an earlier one, even if the store was rewritten in
between. Two runs that read on one worker at the same time therefore only
keep each other from reusing chunks. A chunk missing from the cache
(evicted, or read on another worker) is simply decoded again, so the cache
never changes what a read returns.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable

import numpy as np

from pipeline import chunk_io, scratch


class ChunkCache:
    """Thread-safe store of one run's decoded chunks, oldest evicted first past a byte limit."""

    def __init__(self) -> None:
        self._entries: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._run: Hashable = None
        self._lock = threading.Lock()

    def _switch_to(self, run: Hashable) -> None:
        if run != self._run:
            self._entries.clear()
            self._bytes = 0
            self._run = run

    @property
    def nbytes(self) -> int:
        """Bytes of the chunks held now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, run: Hashable, key: Hashable, *, take: bool = False) -> np.ndarray | None:
        """Return the chunk of ``run`` stored under ``key``, or ``None``. With ``take=True`` also drop it."""
        with self._lock:
            self._switch_to(run)
            if take:
                chunk = self._entries.pop(key, None)
                if chunk is not None:
                    self._bytes -= chunk.nbytes
                return chunk
            return self._entries.get(key)

    def put(self, run: Hashable, key: Hashable, chunk: np.ndarray, limit_bytes: int) -> None:
        """Keep ``chunk`` (read only from now on) of ``run`` under ``key``, then evict the oldest past ``limit_bytes``."""
        chunk.flags.writeable = False
        with self._lock:
            self._switch_to(run)
            previous = self._entries.pop(key, None)
            if previous is not None:
                self._bytes -= previous.nbytes
            self._entries[key] = chunk
            self._bytes += chunk.nbytes
            while self._bytes > limit_bytes and self._entries:
                _, oldest = self._entries.popitem(last=False)
                self._bytes -= oldest.nbytes

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0
            self._run = None


CHUNKS = ChunkCache()
"""The cache of this process, shared by the block tasks of all its threads."""


def chunk_ranges(start: int, stop: int, chunk: int, size: int) -> list[tuple[int, int, int]]:
    """Return ``(index, chunk_start, chunk_stop)`` of the chunks of side ``chunk`` that ``[start, stop)`` touches.

    The last chunk ends at ``size``, the array's extent.
    """
    return [
        (index, index * chunk, min((index + 1) * chunk, size))
        for index in range(start // chunk, (stop - 1) // chunk + 1)
    ]


def read_region_cached(
    array,
    run: Hashable,
    footprint: tuple[int, int, int, int],
    own: tuple[int, int, int, int],
    limit_bytes: int,
    cache: ChunkCache = CHUNKS,
    keep_below: bool = True,
    capacity: int = 0,
) -> np.ndarray:
    """Read ``array[:, y0:y1, x0:x1]`` of a ``(band, y, x)`` zarr array chunk by chunk through ``cache``.

    Parameters
    ----------
    array
        A zarr array whose chunks span all bands.
    run
        Token of the run, the same for every read of one store in one run.
    footprint
        ``(y0, y1, x0, x1)`` to read.
    own
        ``(y0, y1, x0, x1)`` of the block the read is for. Chunks whose last
        pixel lies inside it are taken out of the cache; the others are kept
        for the blocks after it.
    limit_bytes
        Most bytes the cache may hold after this read.
    keep_below
        Whether to cache the chunks below ``own`` that do not reach right of
        it, which only the next row of blocks reads. Without them the cache
        holds only what the next block of the row reads.
    capacity
        Minimum size in bytes of a new buffer for the output, if the
        process's pool (:mod:`pipeline.scratch`) makes one.
    """
    y0, y1, x0, x1 = footprint
    bands, height, width = array.shape
    _, chunk_y, chunk_x = array.chunks
    out = scratch.BLOCK_ARRAYS.empty((bands, y1 - y0, x1 - x0), array.dtype, capacity=capacity)
    access = chunk_io.chunk_access(array)
    for row, row_start, row_stop in chunk_ranges(y0, y1, chunk_y, height):
        for col, col_start, col_stop in chunk_ranges(x0, x1, chunk_x, width):
            last_reader = own[0] < row_stop <= own[1] and own[2] < col_stop <= own[3]
            cache_it = not last_reader and (keep_below or col_stop > own[3])
            chunk = cache.get(run, (row, col), take=not cache_it)
            if chunk is None:
                if access is not None:
                    chunk = access.read((0, row, col))
                else:
                    chunk = np.asarray(array[:, row_start:row_stop, col_start:col_stop])
                if cache_it:
                    cache.put(run, (row, col), chunk, limit_bytes)
            top, bottom = max(y0, row_start), min(y1, row_stop)
            left, right = max(x0, col_start), min(x1, col_stop)
            out[:, top - y0: bottom - y0, left - x0: right - x0] = chunk[
                :, top - row_start: bottom - row_start, left - col_start: right - col_start
            ]
    return out
