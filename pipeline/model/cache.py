"""Thread-safe LRU cache for tensors derived from model weights.

Cached values (generated kernels, resized position embeddings, bfloat16
copies of weights) depend on parameters that may change: ``load_state_dict``
and optimiser steps update them in place, which bumps the tensor's
``_version`` counter, and ``.to()`` replaces their storage. Keys therefore
include :func:`weights_version` of the source tensors, so a stale entry is
never returned.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

import torch

Value = TypeVar("Value")


def weights_version(tensors: Iterable[torch.Tensor]) -> tuple[tuple[int, int], ...]:
    """Return a key that changes whenever one of ``tensors`` is modified or replaced."""
    return tuple((tensor.data_ptr(), tensor._version) for tensor in tensors)


class TensorCache(Generic[Value]):
    """LRU mapping from hashable keys to values, safe to share between threads.

    A miss computes the value outside the lock, so two threads may compute
    the same entry at once. The first stored value wins and both get it.
    """

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: collections.OrderedDict[Hashable, Value] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get_or_compute(self, key: Hashable, compute: Callable[[], Value]) -> Value:
        """Return the value for ``key``, calling ``compute()`` under ``torch.no_grad`` on a miss.

        Values are computed outside inference mode, so that a cache filled
        under ``torch.inference_mode`` also serves later autograd-recorded calls.
        """
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        with torch.inference_mode(False), torch.no_grad():
            value = compute()
        with self._lock:
            value = self._entries.setdefault(key, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return value

    def __getstate__(self) -> dict[str, object]:
        # Copies and pickles of a model start with an empty cache and a new lock.
        return {"max_entries": self.max_entries}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__(state["max_entries"])  # type: ignore[misc]

    def clear(self) -> None:
        """Remove every entry."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
