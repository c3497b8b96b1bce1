"""The pool that hands the large per-block arrays of block tasks out again."""

import pickle

import numpy as np
import pytest

from pipeline.scratch import ArrayPool


def test_pool_reuses_buffer_after_last_view():
    pool = ArrayPool(max_buffers=4, min_bytes=1)
    first = pool.empty((3, 20, 20), np.int32)
    overlap = first[:, 5:10, 2:8]  # as overlap_into hands a neighbour
    del first

    second = pool.empty((3, 20, 20), np.int32)
    assert not np.shares_memory(second, overlap)

    del overlap
    third = pool.empty((3, 20, 20), np.int32)
    assert not np.shares_memory(third, second)
    assert pool.nbytes == 2 * 3 * 20 * 20 * 4


def test_pool_array_in_larger_buffer():
    pool = ArrayPool(max_buffers=1, min_bytes=1)
    pool.empty((4, 10, 10), np.int32)  # 1600 bytes, unused at once
    smaller = pool.empty((3, 10, 10), np.int16)  # 600 bytes: too small a use for that buffer
    assert pool.nbytes == 600
    del smaller
    array = pool.empty((2, 10, 15), np.int16)  # 600 bytes, reuses
    assert array.shape == (2, 10, 15)
    assert array.dtype == np.int16
    assert array.flags.c_contiguous
    assert pool.nbytes == 600


def test_pool_capacity_serves_larger_arrays():
    pool = ArrayPool(max_buffers=4, min_bytes=1)
    edge = pool.empty((3, 10, 8), np.int32, capacity=3 * 12 * 12 * 4)  # an edge block's sums
    assert pool.nbytes == 3 * 12 * 12 * 4
    del edge
    interior = pool.empty((3, 12, 12), np.int32)
    assert pool.nbytes == 3 * 12 * 12 * 4
    interior[:] = 5
    assert int(interior.sum()) == 5 * 3 * 12 * 12


def test_pool_keeps_buffers_for_their_kind():
    pool = ArrayPool(max_buffers=4, min_bytes=1)
    sums = pool.empty((3, 12, 12), np.int32)  # 1728 bytes
    del sums
    reflectance = pool.empty((4, 12, 12), np.int16)  # 1152 bytes: the sums' buffer is over a quarter larger
    assert pool.nbytes == 1728 + 1152
    sums = pool.empty((3, 12, 12), np.int32)
    assert not np.shares_memory(sums, reflectance)
    assert pool.nbytes == 1728 + 1152


def test_pool_keeps_at_most_max_buffers():
    pool = ArrayPool(max_buffers=2, min_bytes=1)
    arrays = [pool.empty((10, 10), np.float32) for _ in range(5)]
    assert pool.nbytes == 2 * 400
    for index, array in enumerate(arrays):
        array[:] = index
    # The arrays outside the pool are ordinary arrays that share nothing.
    assert [float(array[0, 0]) for array in arrays] == [0, 1, 2, 3, 4]


def test_pool_skips_small_arrays():
    pool = ArrayPool(min_bytes=1024)
    array = pool.empty((10, 10), np.float32)
    assert array.shape == (10, 10)
    assert pool.nbytes == 0


def test_pool_array_pickles_as_copy():
    pool = ArrayPool(max_buffers=1, min_bytes=1)
    array = pool.empty((6, 6), np.int32)
    array[2, 3] = 7
    copy = pickle.loads(pickle.dumps(array))
    del array
    pool.empty((6, 6), np.int32).fill(0)  # reuses and overwrites the buffer
    assert copy[2, 3] == 7


def test_pool_clear_keeps_arrays_in_use():
    pool = ArrayPool(max_buffers=2, min_bytes=1)
    array = pool.empty((4, 4), np.int64)
    pool.clear()
    assert pool.nbytes == 0
    array[:] = 3
    assert int(array.sum()) == 48


def test_pool_rejects_zero_max_buffers():
    with pytest.raises(ValueError, match="max_buffers must be at least 1, got 0"):
        ArrayPool(max_buffers=0)


def test_pool_drops_surplus_unused_buffers():
    pool = ArrayPool(max_buffers=8, max_unused=1, min_bytes=1)
    arrays = [pool.empty((10, 10), np.float32) for _ in range(4)]
    assert pool.nbytes == 4 * 400
    del arrays
    reused = pool.empty((10, 10), np.float32)  # takes one, keeps one more unused
    assert reused.shape == (10, 10)
    assert pool.nbytes == 2 * 400


def test_pool_rejects_negative_max_unused():
    with pytest.raises(ValueError, match="max_unused must be at least 0, got -1"):
        ArrayPool(max_unused=-1)
