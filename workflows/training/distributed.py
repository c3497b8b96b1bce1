"""Process-group set-up for ``torchrun`` and exact sharding of evaluation data.

One process (CPU or one GPU) needs nothing here: :func:`init_distributed`
returns a context with ``world_size == 1``. Under ``torchrun`` the
environment variables ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` select the
process's rank and GPU; NCCL is used on GPUs and Gloo on CPUs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DistributedContext:
    """Rank, world size and device of this process."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Whether this process writes checkpoints, logs progress and shows bars."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """Whether a process group with more than one process is running."""
        return self.world_size > 1


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` into a device.

    ``"auto"`` picks this process's GPU when CUDA is available, else the CPU.

    Raises
    ------
    ValueError
        If CUDA is requested but not available.
    """
    if device == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available; use device: cpu or auto")
        if resolved.index is None:
            resolved = torch.device("cuda", local_rank)
    return resolved


def init_distributed(device: str = "auto") -> DistributedContext:
    """Join the ``torchrun`` process group if there is one, and pick the device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device, local_rank)

    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        dist.init_process_group(backend=backend)
        logger.info("joined process group: rank %d of %d, backend %s, device %s", rank, world_size, backend, resolved)
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=resolved)


def shutdown_distributed(context: DistributedContext) -> None:
    """Leave the process group that :func:`init_distributed` joined."""
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(array: np.ndarray, context: DistributedContext) -> np.ndarray:
    """Sum an integer or float array over all processes (a no-op for one process)."""
    if not context.enabled:
        return array
    backend_device = context.device if dist.get_backend() == "nccl" else torch.device("cpu")
    tensor = torch.as_tensor(array, dtype=torch.float64 if array.dtype.kind == "f" else torch.int64).to(backend_device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.cpu().numpy().astype(array.dtype)


def barrier(context: DistributedContext) -> None:
    """Wait for every process (a no-op for one process)."""
    if context.enabled:
        dist.barrier()


class EpochSampler(Sampler[int]):
    """Shuffled, sharded sample order that is a pure function of (seed, epoch).

    Every process draws the same permutation, pads it to a multiple of the
    world size and takes every ``world_size``-th index from its rank. The
    first ``skip`` indices of the shard are dropped, which is how a resumed
    run continues an epoch at the batch where it stopped.
    """

    def __init__(self, size: int, *, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True) -> None:
        if size < 1:
            raise ValueError("cannot sample from an empty dataset")
        self.size = size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Select the epoch's permutation and how many of this shard's indices to skip."""
        self.epoch = epoch
        self.skip = skip

    def shard(self) -> list[int]:
        """Return this process's indices for the current epoch, before skipping."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        padded = order + order[: (-len(order)) % self.world_size]
        return padded[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.shard()[self.skip :])

    def __len__(self) -> int:
        return max(0, len(self.shard()) - self.skip)


def shard_indices(size: int, context: DistributedContext) -> list[int]:
    """Indices of an evaluation set that this process handles, without padding.

    Unlike a padded sampler, every item is counted exactly once over all
    processes, so summed confusion matrices are exact.
    """
    return list(range(context.rank, size, context.world_size))
