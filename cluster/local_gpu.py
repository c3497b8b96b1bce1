"""One worker per GPU on this machine with dask-cuda's ``LocalCUDACluster``."""

from __future__ import annotations

import logging
from typing import Any

from dask.system import CPU_COUNT
from dask.utils import format_bytes
from distributed import LocalCluster
from distributed.system import MEMORY_LIMIT

from cluster._optional import import_backend
from cluster.environment import spawn_settings, worker_environment
from cluster.gpu import GPU_RESOURCE, GPUNotFoundError
from cluster.local import dashboard_arguments, describe_environment
from cluster.profile import LocalGPUProfile

logger = logging.getLogger(__name__)


def merge_worker_environment(worker_spec: dict[str, Any], environment: dict[str, str]) -> dict[str, Any]:
    """Add ``environment`` to the nanny ``env`` of each worker in a SpecCluster worker spec.

    Variables already in a worker's ``env`` win, so dask-cuda's per-worker
    ``CUDA_VISIBLE_DEVICES`` is kept.
    """
    for spec in worker_spec.values():
        options = spec.setdefault("options", {})
        options["env"] = {**environment, **(options.get("env") or {})}
    return worker_spec


def _cuda_cluster_class(base: type) -> type:
    """Subclass dask-cuda's cluster so that every worker also gets the fleximo environment.

    ``LocalCUDACluster`` replaces the nanny ``env`` of each new worker with its
    own ``CUDA_VISIBLE_DEVICES``, which would drop an ``env`` passed in.
    """

    class FleximoCUDACluster(base):
        def __init__(self, environment: dict[str, str], **kwargs: Any) -> None:
            self._fleximo_environment = environment
            super().__init__(**kwargs)

        def new_worker_spec(self) -> dict[str, Any]:
            return merge_worker_environment(super().new_worker_spec(), self._fleximo_environment)

    return FleximoCUDACluster


def _gpu_memory_limit(profile: LocalGPUProfile, n_gpus: int) -> int:
    if profile.memory_limit == "auto":
        return MEMORY_LIMIT // max(1, n_gpus)
    return profile.memory_limit


def describe_local_gpu(profile: LocalGPUProfile) -> str:
    """Describe the worker layout of a ``local-gpu`` profile (one worker per GPU)."""
    devices = "all visible" if profile.devices is None else ",".join(map(str, profile.devices))
    n_gpus = len(profile.devices) if profile.devices is not None else _visible_gpu_count()
    gpu_count = n_gpus if n_gpus is not None else "<number of GPUs>"
    worker_cores = max(1, CPU_COUNT // (n_gpus or 1))
    memory = (
        format_bytes(profile.memory_limit)
        if profile.memory_limit != "auto"
        else "machine memory / number of GPUs"
    )
    lines = [
        f"profile {profile.name!r} (kind local-gpu): dask_cuda.LocalCUDACluster",
        f"GPUs: {devices} (CUDA_VISIBLE_DEVICES), one worker per GPU",
        f"workers: {gpu_count} x {profile.threads_per_worker} threads, memory limit {memory} each",
        "worker resources: GPU=1",
        f"rmm pool: {format_bytes(profile.rmm_pool_size) if profile.rmm_pool_size else 'off'}",
    ]
    environment = worker_environment(
        worker_cores=worker_cores,
        threads_per_worker=profile.threads_per_worker,
        memory_limit_bytes=_gpu_memory_limit(profile, n_gpus or 1),
        overrides=profile.environment,
    )
    return "\n".join(lines) + "\n" + describe_environment(environment)


def create_local_gpu_cluster(profile: LocalGPUProfile) -> LocalCluster:
    """Start one worker per GPU with dask-cuda, or fail fast when there is no GPU.

    Raises
    ------
    MissingBackendError
        If dask-cuda is not installed (extra ``gpu``).
    GPUNotFoundError
        If NVML finds no NVIDIA driver or no GPU.
    """
    # NOTE: without a GPU the tests cover only the NVML failure and the
    # environment subclass on a plain LocalCluster; a start on GPUs is untested.
    dask_cuda = import_backend("dask_cuda", "gpu", profile_kind="local-gpu")
    pynvml = import_backend("pynvml", "gpu", profile_kind="local-gpu")

    try:
        n_gpus = len(profile.devices) if profile.devices is not None else _count_gpus(pynvml)
        memory_limit_bytes = _gpu_memory_limit(profile, n_gpus)
        environment = worker_environment(
            worker_cores=max(1, CPU_COUNT // n_gpus),
            threads_per_worker=profile.threads_per_worker,
            memory_limit_bytes=memory_limit_bytes,
            overrides=profile.environment,
        )
        logger.info("starting LocalCUDACluster: %d GPU workers", n_gpus)
        cluster_class = _cuda_cluster_class(dask_cuda.LocalCUDACluster)
        with spawn_settings(environment):
            return cluster_class(
                environment,
                CUDA_VISIBLE_DEVICES=profile.devices,
                threads_per_worker=profile.threads_per_worker,
                memory_limit=memory_limit_bytes,
                rmm_pool_size=profile.rmm_pool_size,
                resources={GPU_RESOURCE: 1},
                **dashboard_arguments(profile.dashboard_address),
            )
    except pynvml.NVMLError as error:
        raise GPUNotFoundError(
            f"cluster profile {profile.name!r} (kind local-gpu) found no usable NVIDIA GPU: "
            f"NVML failed with {error!r}. Check that `nvidia-smi` lists a GPU and that "
            "CUDA_VISIBLE_DEVICES is not empty, or run on CPU with the profile 'local'."
        ) from error


def _visible_gpu_count() -> int | None:
    """Return the number of GPUs NVML finds, or None where dask-cuda or a GPU is missing."""
    try:
        import pynvml
    except ImportError:
        return None

    try:
        return _count_gpus(pynvml)
    except pynvml.NVMLError:
        return None


def _count_gpus(pynvml) -> int:
    pynvml.nvmlInit()
    try:
        count = pynvml.nvmlDeviceGetCount()
    finally:
        pynvml.nvmlShutdown()
    if count < 1:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
    return count
