"""Worker pods on Kubernetes through the dask-kubernetes operator."""

from __future__ import annotations

import logging
import math
from typing import Any

import yaml
from distributed.deploy import Cluster

from cluster._optional import import_backend
from cluster.environment import worker_environment
from cluster.gpu import GPU_RESOURCE
from cluster.profile import KubernetesProfile

logger = logging.getLogger(__name__)

GPU_DEVICE_RESOURCE = "nvidia.com/gpu"
"""Extended resource name of NVIDIA GPUs under the NVIDIA device plugin."""

# The Dask worker limit sits below the pod limit so the nanny spills, pauses
# and restarts the worker before the kubelet kills the whole pod for memory.
_DASK_MEMORY_FRACTION = 0.9


def _quantity_mebibytes(size_bytes: int) -> str:
    return f"{math.ceil(size_bytes / 2**20)}Mi"


def worker_resources(profile: KubernetesProfile) -> dict[str, dict[str, str | int]]:
    """Return the worker container's resource requests and limits."""
    amounts: dict[str, str | int] = {
        "cpu": str(profile.cores_per_worker),
        "memory": _quantity_mebibytes(profile.memory_per_worker),
    }
    if profile.gpus_per_worker > 0:
        amounts[GPU_DEVICE_RESOURCE] = profile.gpus_per_worker
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _worker_command(profile: KubernetesProfile) -> list[str]:
    memory_limit = int(profile.memory_per_worker * _DASK_MEMORY_FRACTION)
    command = [
        "dask",
        "worker",
        "--nthreads",
        str(profile.worker_threads),
        "--memory-limit",
        str(memory_limit),
    ]
    if profile.gpus_per_worker > 0:
        # The device plugin shows the container only its own GPUs, so a plain
        # Dask worker needs no device pinning. One GPU per pod gives one model
        # task per GPU.
        command += ["--resources", f"{GPU_RESOURCE}={profile.gpus_per_worker}"]
    return command


def kubernetes_cluster_spec(profile: KubernetesProfile) -> dict[str, Any]:
    """Build the ``DaskCluster`` resource of a profile without contacting Kubernetes.

    Starts from dask-kubernetes' ``make_cluster_spec``, then sets the worker
    pods' GPU request, memory limit, thread settings, node selector and
    tolerations. The scheduler pod requests CPU and memory only.

    Raises
    ------
    MissingBackendError
        If dask-kubernetes is not installed (extra ``kubernetes``).
    """
    operator = import_backend("dask_kubernetes.operator", "kubernetes", profile_kind="kubernetes")
    environment = worker_environment(
        worker_cores=profile.cores_per_worker,
        threads_per_worker=profile.worker_threads,
        memory_limit_bytes=int(profile.memory_per_worker * _DASK_MEMORY_FRACTION),
        overrides=profile.environment,
    )
    spec = operator.make_cluster_spec(
        name=profile.cluster_name,
        image=profile.image,
        n_workers=profile.min_workers,
        env=environment,
        worker_command=_worker_command(profile),
        idle_timeout=profile.idle_timeout_s,
    )
    if profile.namespace is not None:
        spec["metadata"]["namespace"] = profile.namespace

    worker_pod = spec["spec"]["worker"]["spec"]
    worker_container = worker_pod["containers"][0]
    worker_container["resources"] = worker_resources(profile)
    if profile.node_selector:
        worker_pod["nodeSelector"] = dict(profile.node_selector)
    if profile.tolerations:
        worker_pod["tolerations"] = [dict(toleration) for toleration in profile.tolerations]

    # make_cluster_spec gives the scheduler the worker environment too; the
    # scheduler runs no tasks, so it starts with the image's own environment.
    scheduler_container = spec["spec"]["scheduler"]["spec"]["containers"][0]
    scheduler_container["env"] = []
    scheduler_amounts = {
        "cpu": str(profile.scheduler_cores),
        "memory": _quantity_mebibytes(profile.scheduler_memory),
    }
    scheduler_container["resources"] = {"requests": scheduler_amounts, "limits": dict(scheduler_amounts)}

    if profile.image_pull_policy is not None:
        worker_container["imagePullPolicy"] = profile.image_pull_policy
        scheduler_container["imagePullPolicy"] = profile.image_pull_policy
    return spec


def describe_kubernetes(profile: KubernetesProfile) -> str:
    """Return the ``DaskCluster`` resource of a profile as YAML."""
    return yaml.safe_dump(kubernetes_cluster_spec(profile), sort_keys=False)


def create_kubernetes_cluster(profile: KubernetesProfile) -> Cluster:
    """Create the ``DaskCluster`` resource and connect to its scheduler.

    Needs a kubeconfig or in-cluster credentials and the dask-kubernetes
    operator installed in the cluster.

    Raises
    ------
    MissingBackendError
        If dask-kubernetes is not installed (extra ``kubernetes``).
    """
    # NOTE: the tests build the spec but never start it on a Kubernetes cluster.
    operator = import_backend("dask_kubernetes.operator", "kubernetes", profile_kind="kubernetes")
    logger.info(
        "creating DaskCluster %r: %d-%d workers with %d GPUs each",
        profile.cluster_name,
        profile.min_workers,
        profile.max_workers,
        profile.gpus_per_worker,
    )
    return operator.KubeCluster(
        custom_cluster_spec=kubernetes_cluster_spec(profile),
        namespace=profile.namespace,
        resource_timeout=int(profile.start_timeout_s),
    )
