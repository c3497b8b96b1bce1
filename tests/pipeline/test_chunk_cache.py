"""The per-process cache of decoded cube chunks that block reads share."""

import numpy as np
import pytest
import zarr

from pipeline import chunk_cache, layout
from pipeline.blocks import CubeInfo, read_block
from pipeline.chunk_cache import ChunkCache, chunk_ranges, read_region_cached


@pytest.fixture(params=["local", "memory"])
def cube(tmp_path, request):
    # A local store is read chunk by chunk outside zarr, a store in memory through zarr.
    store = tmp_path / "cube.zarr" if request.param == "local" else zarr.storage.MemoryStore()
    values = np.random.default_rng(0).integers(-100, 10000, size=(3, 50, 70)).astype(np.int16)
    array = zarr.create_array(store, shape=values.shape, chunks=(3, 16, 16), dtype="int16")
    array[:] = values
    return array, values


def test_chunk_ranges_clip_the_last_chunk():
    assert chunk_ranges(10, 40, 16, 50) == [(0, 0, 16), (1, 16, 32), (2, 32, 48)]
    assert chunk_ranges(48, 50, 16, 50) == [(3, 48, 50)]


def test_cached_reads_equal_plain_reads_in_any_order(cube):
    array, values = cube
    cache = ChunkCache()
    blocks = [(y, min(y + 32, 50), x, min(x + 32, 70)) for y in (0, 32) for x in (0, 32, 64)]
    rng = np.random.default_rng(1)
    for index in rng.permutation(len(blocks)):
        y0, y1, x0, x1 = blocks[index]
        footprint = (y0, min(y1 + 10, 50), x0, min(x1 + 10, 70))
        got = read_region_cached(array, "run", footprint, blocks[index], 10**9, cache)
        assert np.array_equal(got, values[:, footprint[0]: footprint[1], footprint[2]: footprint[3]])


def test_halo_chunks_wait_for_their_last_reader(cube):
    array, values = cube
    cache = ChunkCache()
    # Block (0, 0) of 32 px reads 10 px into chunk column 2 and chunk row 2.
    read_region_cached(array, "run", (0, 42, 0, 42), (0, 32, 0, 32), 10**9, cache)
    assert len(cache) == 5  # chunks (0, 2), (1, 2), (2, 0), (2, 1), (2, 2)
    chunk = cache.get("run", (0, 2))
    assert np.array_equal(chunk, values[:, 0:16, 32:48])
    assert not chunk.flags.writeable

    # Block (0, 1) owns chunk column 2 of rows 0 and 1, so it takes them out.
    read_region_cached(array, "run", (0, 42, 32, 70), (0, 32, 32, 64), 10**9, cache)
    assert cache.get("run", (0, 2)) is None
    assert cache.get("run", (1, 2)) is None
    assert cache.get("run", (2, 2)) is not None  # block (1, 1) reads it last


def test_cache_stays_within_its_limit(cube):
    array, _ = cube
    cache = ChunkCache()
    chunk_bytes = 3 * 16 * 16 * 2
    read_region_cached(array, "run", (0, 48, 0, 64), (0, 16, 0, 16), 3 * chunk_bytes, cache)
    # Of the 11 full chunks kept as halo, the last three read remain.
    assert cache.nbytes == 3 * chunk_bytes
    assert cache.get("run", (2, 3)) is not None
    assert cache.get("run", (2, 0)) is None


def test_new_run_never_sees_old_chunks(cube):
    array, values = cube
    cache = ChunkCache()
    read_region_cached(array, "first", (0, 42, 0, 42), (0, 32, 0, 32), 10**9, cache)
    array[:] = values + 1  # the store is rewritten between runs

    got = read_region_cached(array, "second", (0, 42, 32, 70), (0, 32, 32, 64), 10**9, cache)

    assert np.array_equal(got, values[:, 0:42, 32:70] + 1)
    assert cache.get("first", (2, 2)) is None


def _read_every_block(tmp_path, width: int) -> list[tuple[int, int]]:
    """Read each 32 px block of a 64 px high scene with a 12 px halo over 16 px chunks, as block tasks do.

    Checks every read against the scene and returns the cache's chunks and
    bytes after each.
    """
    values = np.random.default_rng(2).integers(0, 10000, size=(2, 64, width)).astype(np.int16)
    group = zarr.open_group(tmp_path / "cube.zarr", mode="w")
    group.create_array(layout.REFLECTANCE_VAR, shape=values.shape, chunks=(2, 16, 16), dtype="int16")[:] = values
    cube = CubeInfo(str(tmp_path / "cube.zarr"), (), 64, width, (0.49, 0.56), -32768)
    chunk_cache.CHUNKS.clear()

    sizes = []
    for y0 in range(0, 64, 32):
        for x0 in range(0, width, 32):
            footprint = (y0, min(y0 + 44, 64), x0, min(x0 + 44, width))
            data = read_block(cube, footprint, (y0, y0 + 32, x0, x0 + 32), f"run-{width}")
            assert np.array_equal(data, values[:, footprint[0]: footprint[1], footprint[2]: footprint[3]])
            sizes.append((len(chunk_cache.CHUNKS), chunk_cache.CHUNKS.nbytes))
    return sizes


@pytest.mark.parametrize("width", [64, 256])
def test_block_reads_keep_memory_flat_in_scene_width(tmp_path, width):
    # A block's halo touches 2 + 2 + 1 chunks.
    largest = max(nbytes for _, nbytes in _read_every_block(tmp_path, width))

    assert largest <= 5 * 2 * 16 * 16 * 2


def test_cache_can_skip_chunks_below(cube):
    array, values = cube
    cache = ChunkCache()
    read_region_cached(array, "run", (0, 42, 0, 42), (0, 32, 0, 32), 10**9, cache, keep_below=False)
    # Only the column that block (0, 1) reads: chunks (0, 2), (1, 2) and the corner (2, 2).
    assert len(cache) == 3
    assert cache.get("run", (2, 0)) is None
    assert cache.get("run", (2, 2)) is not None

    # Block (0, 1) takes its own column, and the corner, which now only the next row reads.
    got = read_region_cached(array, "run", (0, 42, 32, 70), (0, 32, 32, 64), 10**9, cache, keep_below=False)
    assert np.array_equal(got, values[:, 0:42, 32:70])
    assert len(cache) == 3  # chunks (0, 4), (1, 4) and (2, 4), which block (0, 2) reads
    assert cache.get("run", (2, 2)) is None


@pytest.mark.parametrize(("width", "most_chunks"), [(64, 5), (256, 3)])
def test_chunks_below_cached_if_row_fits(tmp_path, width, most_chunks):
    # At 64 px a row of chunks (4) fits in the room of one halo (5), so the
    # chunks below a block wait there for the next row. At 256 px they do not.
    counts = [count for count, _ in _read_every_block(tmp_path, width)]

    assert max(counts) == most_chunks
