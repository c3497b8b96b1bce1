"""Reuse of the large arrays that block tasks allocate once per block.

Each block task allocates arrays of tens of megabytes: the reflectance of its
footprint and the int32 blend sums of its classes. glibc serves allocations
of 32 MiB and more (``MALLOC_MMAP_THRESHOLD_`` in the worker processes,
:mod:`cluster.environment`) with fresh mappings, whose pages the kernel zeroes
on first touch, and unmaps them again on free. On a 2-vCPU VM the first
touch of the 59 MB of sums of a 1024 px block took about 11 ms, as long as
blending the block's 36 tiles into them.

An :class:`ArrayPool` keeps such buffers and hands one out again once no array
uses it any more. Whether an array uses a buffer is read from the buffer's
reference count: every numpy view of a buffer holds one reference to it,
whatever view it was made from. The blend sums of a block are held by Dask
until its neighbours have taken their overlaps, so this reuses a buffer
exactly when the block's results are gone.
"""

from __future__ import annotations

import math
import sys
import threading

import numpy as np


def _references(buffers: list[np.ndarray], index: int) -> int:
    return sys.getrefcount(buffers[index])


# References to a pooled buffer that nothing else uses, as this interpreter
# counts them in _references.
_UNUSED = _references([np.empty(1, np.uint8)], 0)


class ArrayPool:
    """Buffers of large arrays, handed out again when no array uses them.

    Parameters
    ----------
    max_buffers
        Buffers kept at most. When all are in use, :meth:`empty` allocates an
        array outside the pool; when none fits, it replaces the smallest
        unused buffer.
    max_unused
        Unused buffers kept after a call to :meth:`empty`. The smallest others
        are dropped, so that buffers that a task left are not held while the
        next tasks allocate other arrays.
    min_bytes
        Smaller arrays are allocated outside the pool: glibc reuses them from
        its heap anyway.
    """

    def __init__(self, max_buffers: int = 8, max_unused: int = 2, min_bytes: int = 32 * 2**20) -> None:
        if max_buffers < 1:
            raise ValueError(f"max_buffers must be at least 1, got {max_buffers}")
        if max_unused < 0:
            raise ValueError(f"max_unused must be at least 0, got {max_unused}")
        self.max_buffers = max_buffers
        self.max_unused = max_unused
        self.min_bytes = min_bytes
        self._buffers: list[np.ndarray] = []
        self._lock = threading.Lock()

    def empty(self, shape: tuple[int, ...], dtype: np.dtype | type, capacity: int = 0) -> np.ndarray:
        """Return an array of ``shape`` and ``dtype`` whose values are undefined, as :func:`numpy.empty`.

        A new buffer gets at least ``capacity`` bytes. Callers pass the size
        of the largest array of its kind that they will ask for, so that one
        buffer serves every array of that kind. The blocks of a scene differ
        in size by the reach of their tiles. Without it, an unused buffer too
        small for the next block would be kept beside a new one.
        """
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        size = max(nbytes, capacity)
        if size < self.min_bytes:
            return np.empty(shape, dtype)
        with self._lock:
            unused = [index for index in range(len(self._buffers)) if _references(self._buffers, index) == _UNUSED]
            # The smallest unused buffer that is large enough. Buffers more than
            # a quarter larger are left for arrays of their own kind, because
            # blend sums are larger than the reflectance.
            fitting = [index for index in unused if nbytes <= self._buffers[index].nbytes <= size + size // 4]
            if fitting:
                chosen = min(fitting, key=lambda index: self._buffers[index].nbytes)
                unused.remove(chosen)
                buffer = self._buffers[chosen]
            else:
                buffer = np.empty(size, np.uint8)
                if len(self._buffers) < self.max_buffers:
                    self._buffers.append(buffer)
                elif unused:
                    smallest = min(unused, key=lambda index: self._buffers[index].nbytes)
                    unused.remove(smallest)
                    self._buffers[smallest] = buffer
            array = buffer[:nbytes].view(dtype).reshape(shape)
            del buffer
            surplus = sorted(unused, key=lambda index: self._buffers[index].nbytes)[: max(0, len(unused) - self.max_unused)]
            for index in sorted(surplus, reverse=True):
                del self._buffers[index]
            return array

    @property
    def nbytes(self) -> int:
        """Bytes of all buffers kept, used or not."""
        with self._lock:
            return sum(buffer.nbytes for buffer in self._buffers)

    def clear(self) -> None:
        """Drop the buffers kept; arrays still in use keep theirs."""
        with self._lock:
            self._buffers.clear()


BLOCK_ARRAYS = ArrayPool()
"""This process's pool for the footprint reflectance and blend sums of block tasks."""
