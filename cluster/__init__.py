"""Cluster backends: one job file runs on a workstation, under SLURM or on Kubernetes.

A profile (``cluster/profiles/<name>.yaml`` or any YAML file) selects the
backend with its ``kind``; :func:`start_cluster` starts it and yields a
``distributed.Client``. Optional backends (dask-cuda, dask-jobqueue,
dask-kubernetes, dask-gateway) are imported only when a profile needs them.
"""

from cluster._optional import MissingBackendError
from cluster.environment import (
    WORKER_CORES_VARIABLE,
    torch_threads_for_worker,
    worker_environment,
    worker_threads,
)
from cluster.gpu import GPU_RESOURCE, GPUNotFoundError, gpu_workers
from cluster.loading import ProfileError, bundled_profiles, load_profile, parse_profile
from cluster.profile import (
    AddressProfile,
    ClusterProfile,
    KubernetesProfile,
    LocalGPUProfile,
    LocalProfile,
    SlurmProfile,
)
from cluster.start import describe_profile, start_cluster

__all__ = [
    "GPU_RESOURCE",
    "WORKER_CORES_VARIABLE",
    "AddressProfile",
    "ClusterProfile",
    "GPUNotFoundError",
    "KubernetesProfile",
    "LocalGPUProfile",
    "LocalProfile",
    "MissingBackendError",
    "ProfileError",
    "SlurmProfile",
    "bundled_profiles",
    "describe_profile",
    "gpu_workers",
    "load_profile",
    "parse_profile",
    "start_cluster",
    "torch_threads_for_worker",
    "worker_environment",
    "worker_threads",
]
