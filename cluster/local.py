"""Workers on this machine: ``distributed.LocalCluster`` and dask-cuda's ``LocalCUDACluster``."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from dask.system import CPU_COUNT
from dask.utils import format_bytes
from distributed import LocalCluster
from distributed.deploy.utils import nprocesses_nthreads
from distributed.system import MEMORY_LIMIT

from cluster._optional import import_backend
from cluster.environment import torch_threads_per_task, worker_environment
from cluster.gpu import GPUNotFoundError
from cluster.profile import LocalGPUProfile, LocalProfile

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerLayout:
    """Worker processes of a local cluster and what each one gets."""

    n_workers: int
    threads_per_worker: int
    memory_limit_bytes: int
    worker_cores: int

    @property
    def torch_threads(self) -> int:
        """Torch threads per task thread."""
        return torch_threads_per_task(self.worker_cores, self.threads_per_worker)


def local_worker_layout(
    profile: LocalProfile, *, cores: int = CPU_COUNT, memory_bytes: int = MEMORY_LIMIT
) -> WorkerLayout:
    """Size the workers of a ``local`` profile from the machine.

    Sizes the profile sets are kept. With neither ``n_workers`` nor
    ``threads_per_worker`` set, Dask's own split of ``cores`` into processes and
    threads is used; with one set, the other fills the cores.

    Parameters
    ----------
    profile
        The local profile.
    cores
        CPU cores available to this process (cgroup and affinity aware by default).
    memory_bytes
        Memory available to this process in bytes (cgroup aware by default).
    """
    if profile.n_workers is None and profile.threads_per_worker is None:
        n_workers, threads_per_worker = nprocesses_nthreads(cores)
    elif profile.n_workers is None:
        threads_per_worker = profile.threads_per_worker
        n_workers = max(1, cores // threads_per_worker)
    elif profile.threads_per_worker is None:
        n_workers = profile.n_workers
        threads_per_worker = max(1, cores // n_workers)
    else:
        n_workers, threads_per_worker = profile.n_workers, profile.threads_per_worker

    if profile.memory_limit == "auto":
        memory_limit_bytes = memory_bytes // n_workers
    else:
        memory_limit_bytes = profile.memory_limit

    worker_cores = max(1, cores // n_workers)
    return WorkerLayout(n_workers, threads_per_worker, memory_limit_bytes, worker_cores)


def describe_local(profile: LocalProfile) -> str:
    """Describe the worker layout a ``local`` profile starts on this machine."""
    layout = local_worker_layout(profile)
    resources = "GPU=1" if profile.gpu_resource else "none"
    lines = [
        f"profile {profile.name!r} (kind local): distributed.LocalCluster, worker processes",
        f"machine: {CPU_COUNT} cores, {format_bytes(MEMORY_LIMIT)} memory",
        f"workers: {layout.n_workers} x {layout.threads_per_worker} threads, "
        f"{layout.worker_cores} cores and {format_bytes(layout.memory_limit_bytes)} memory each",
        f"torch threads per task: {layout.torch_threads}",
        f"worker resources: {resources}",
        f"dashboard: {profile.dashboard_address or 'off'}",
    ]
    return "\n".join(lines) + "\n" + _describe_environment(_local_environment(profile, layout))


def _local_environment(profile: LocalProfile, layout: WorkerLayout) -> dict[str, str]:
    return worker_environment(
        worker_cores=layout.worker_cores,
        threads_per_worker=layout.threads_per_worker,
        memory_limit_bytes=layout.memory_limit_bytes,
        overrides=profile.environment,
    )


def _describe_environment(environment: dict[str, str]) -> str:
    lines = ["worker environment:"]
    lines += [f"  {name}={value}" for name, value in sorted(environment.items())]
    return "\n".join(lines)


def _dashboard_arguments(address: str | None) -> dict[str, object]:
    """Return the LocalCluster arguments that serve the dashboard at ``address``, or none.

    The scheduler's HTTP server starts even without a dashboard. A random port
    avoids warnings about port 8787 when other clusters run on this machine.
    """
    if address is not None:
        return {"dashboard_address": address}
    return {"dashboard_address": ":0", "scheduler_kwargs": {"dashboard": False}}


def create_local_cluster(profile: LocalProfile) -> LocalCluster:
    """Start the worker processes of a ``local`` profile."""
    layout = local_worker_layout(profile)
    logger.info(
        "starting LocalCluster: %d workers x %d threads, %s each",
        layout.n_workers,
        layout.threads_per_worker,
        format_bytes(layout.memory_limit_bytes),
    )
    return LocalCluster(
        n_workers=layout.n_workers,
        threads_per_worker=layout.threads_per_worker,
        memory_limit=layout.memory_limit_bytes,
        processes=True,
        **_dashboard_arguments(profile.dashboard_address),
        resources={"GPU": 1} if profile.gpu_resource else None,
        env=_local_environment(profile, layout),
    )


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
    return "\n".join(lines) + "\n" + _describe_environment(environment)


def create_local_gpu_cluster(profile: LocalGPUProfile) -> LocalCluster:
    """Start one worker per GPU with dask-cuda, or fail fast when there is no GPU.

    Raises
    ------
    MissingBackendError
        If dask-cuda is not installed (extra ``gpu``).
    GPUNotFoundError
        If NVML finds no NVIDIA driver or no GPU.
    """
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
        return dask_cuda.LocalCUDACluster(
            CUDA_VISIBLE_DEVICES=profile.devices,
            threads_per_worker=profile.threads_per_worker,
            memory_limit=memory_limit_bytes,
            rmm_pool_size=profile.rmm_pool_size,
            **_dashboard_arguments(profile.dashboard_address),
            resources={"GPU": 1},
            env=environment,
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
