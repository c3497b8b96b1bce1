"""Start the cluster a profile describes, or describe what it would start."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from distributed import Client
from distributed.deploy import Cluster

from cluster.address import connect_address, describe_address
from cluster.gpu import GPUNotFoundError, check_gpu_workers, gpu_workers
from cluster.kubernetes import create_kubernetes_cluster, describe_kubernetes
from cluster.local import create_local_cluster, describe_local
from cluster.local_gpu import create_local_gpu_cluster, describe_local_gpu
from cluster.profile import (
    AddressProfile,
    ClusterProfile,
    KubernetesProfile,
    LocalGPUProfile,
    LocalProfile,
    SlurmProfile,
)
from cluster.slurm import create_slurm_cluster, slurm_job_script

logger = logging.getLogger(__name__)


def describe_profile(profile: ClusterProfile) -> str:
    """Describe what :func:`start_cluster` would start, without starting it.

    Returns
    -------
    str
        For ``slurm`` the batch script of one job, for ``kubernetes`` the
        ``DaskCluster`` resource as YAML, for ``local`` and ``local-gpu`` the
        worker layout and environment, for ``address`` the connection target.
    """
    if isinstance(profile, LocalProfile):
        return describe_local(profile)
    if isinstance(profile, LocalGPUProfile):
        return describe_local_gpu(profile)
    if isinstance(profile, SlurmProfile):
        return slurm_job_script(profile)
    if isinstance(profile, KubernetesProfile):
        return describe_kubernetes(profile)
    return describe_address(profile)


def _create_cluster(profile: ClusterProfile) -> Cluster:
    if isinstance(profile, LocalProfile):
        return create_local_cluster(profile)
    if isinstance(profile, LocalGPUProfile):
        return create_local_gpu_cluster(profile)
    if isinstance(profile, SlurmProfile):
        return create_slurm_cluster(profile)
    if isinstance(profile, KubernetesProfile):
        return create_kubernetes_cluster(profile)
    raise TypeError(f"profile kind {profile.kind!r} starts no cluster of its own")


def _scaling_bounds(profile: ClusterProfile) -> tuple[int, int] | None:
    """Return the adaptive (minimum, maximum) workers, or None for a fixed size."""
    if isinstance(profile, SlurmProfile):
        processes = profile.worker_processes
        return profile.min_jobs * processes, profile.max_jobs * processes
    if isinstance(profile, KubernetesProfile):
        return profile.min_workers, profile.max_workers
    return None


def _adapt(cluster: Cluster, profile: ClusterProfile) -> bool:
    """Turn on adaptive scaling where the profile has bounds; return whether it did.

    The minimum is raised to one worker: the stages read the cluster's layout
    (GPU workers, cores) when they start, so the cluster never scales to zero
    while a run lasts.
    """
    bounds = _scaling_bounds(profile)
    if bounds is None:
        return False
    minimum, maximum = bounds
    minimum = max(1, minimum)
    logger.info("adaptive scaling between %d and %d workers", minimum, maximum)
    cluster.adapt(minimum=minimum, maximum=maximum)
    return True


@contextlib.contextmanager
def start_cluster(profile: ClusterProfile) -> Iterator[Client]:
    """Start (or connect to) the cluster of a profile and yield a client.

    Everything started here is closed on exit: the client, the workers and
    the scheduler, SLURM jobs and Kubernetes resources. A cluster reached
    through an ``address`` profile is left running.

    Adaptive clusters (SLURM, Kubernetes) keep at least one worker, and start
    waits up to ``start_timeout_s`` for it. For profiles that need GPUs, start
    then raises unless torch finds a CUDA device on every worker.

    Raises
    ------
    GPUNotFoundError
        If a GPU profile's workers have no CUDA device.
    TimeoutError
        If an adaptive cluster starts no worker within ``start_timeout_s``.
    MissingBackendError
        If the profile's backend package is not installed; the message names
        the extra.
    """
    with contextlib.ExitStack() as stack:
        if isinstance(profile, AddressProfile):
            client = stack.enter_context(connect_address(profile))
        else:
            cluster = stack.enter_context(_create_cluster(profile))
            adaptive = _adapt(cluster, profile)
            client = stack.enter_context(Client(cluster))
            if adaptive and not profile.requires_gpu:
                _wait_for_first_worker(client, profile)

        if profile.requires_gpu:
            _check_gpus(client, profile)

        logger.info("cluster %r ready, %d workers", profile.name, len(client.scheduler_info(n_workers=-1)["workers"]))
        yield client


def _wait_for_first_worker(client: Client, profile: ClusterProfile) -> None:
    try:
        client.wait_for_workers(1, timeout=profile.start_timeout_s)
    except TimeoutError as error:
        raise TimeoutError(
            f"cluster profile {profile.name!r} started no worker within "
            f"{profile.start_timeout_s:g} s; check the job or pod logs and the queue, "
            "or raise start_timeout_s"
        ) from error


def _check_gpus(client: Client, profile: ClusterProfile) -> None:
    if isinstance(profile, AddressProfile):
        _wait_for_first_worker(client, profile)
        if not gpu_workers(client):
            raise GPUNotFoundError(
                f"cluster profile {profile.name!r} sets require_gpu, but no worker of the "
                f"scheduler advertises the GPU resource; start GPU workers with "
                "`dask worker ... --resources GPU=1` or set require_gpu to false"
            )
    check_gpu_workers(
        client,
        profile_name=profile.name,
        timeout_s=profile.start_timeout_s,
        only_gpu_resource=isinstance(profile, AddressProfile),
    )
