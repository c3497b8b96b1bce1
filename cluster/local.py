"""Worker processes on this machine with ``distributed.LocalCluster``."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from dask.system import CPU_COUNT
from dask.utils import format_bytes
from distributed import LocalCluster
from distributed.deploy.utils import nprocesses_nthreads
from distributed.system import MEMORY_LIMIT

from cluster.environment import spawn_settings, torch_threads_per_task, worker_environment
from cluster.profile import LocalProfile

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
    return "\n".join(lines) + "\n" + describe_environment(_local_environment(profile, layout))


def _local_environment(profile: LocalProfile, layout: WorkerLayout) -> dict[str, str]:
    return worker_environment(
        worker_cores=layout.worker_cores,
        threads_per_worker=layout.threads_per_worker,
        memory_limit_bytes=layout.memory_limit_bytes,
        overrides=profile.environment,
    )


def describe_environment(environment: dict[str, str]) -> str:
    lines = ["worker environment:"]
    lines += [f"  {name}={value}" for name, value in sorted(environment.items())]
    return "\n".join(lines)


def dashboard_arguments(address: str | None) -> dict[str, object]:
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
    environment = _local_environment(profile, layout)
    with spawn_settings(environment):
        return LocalCluster(
            n_workers=layout.n_workers,
            threads_per_worker=layout.threads_per_worker,
            memory_limit=layout.memory_limit_bytes,
            processes=True,
            **dashboard_arguments(profile.dashboard_address),
            resources={"GPU": 1} if profile.gpu_resource else None,
            env=environment,
        )
