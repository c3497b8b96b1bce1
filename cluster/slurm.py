"""SLURM batch jobs through dask-jobqueue's ``SLURMCluster``."""

from __future__ import annotations

import logging
import shlex
from typing import Any

from distributed import SpecCluster

from cluster._optional import import_backend
from cluster.environment import worker_environment
from cluster.gpu import GPU_RESOURCE
from cluster.profile import SlurmProfile

logger = logging.getLogger(__name__)

# dask-cuda's worker command starts one worker per GPU of the job and pins each
# to its device through CUDA_VISIBLE_DEVICES; jobqueue runs it as `python -m`.
# NOTE: the tests run batch scripts of CPU jobs only; this GPU command is untested.
_GPU_WORKER_COMMAND = "dask_cuda.cli"
_CPU_WORKER_COMMAND = "distributed.cli.dask_worker"


def _gres(profile: SlurmProfile) -> str:
    gpu_model = f"{profile.gpu_type}:" if profile.gpu_type else ""
    return f"--gres=gpu:{gpu_model}{profile.gpus_per_job}"


def slurm_worker_environment(profile: SlurmProfile) -> dict[str, str]:
    """Build the environment of each worker process of a SLURM job."""
    processes = profile.worker_processes
    return worker_environment(
        worker_cores=profile.cores_per_job // processes,
        threads_per_worker=profile.cores_per_job // processes,
        memory_limit_bytes=profile.memory_per_job // processes,
        overrides=profile.environment,
    )


def slurm_cluster_arguments(profile: SlurmProfile) -> dict[str, Any]:
    """Build the keyword arguments of ``dask_jobqueue.SLURMCluster`` for a profile.

    The job script gets exactly one memory directive (``--mem``, from
    ``memory_per_job``), the GPU request as gres, one worker per GPU with the
    ``GPU=1`` resource, and ``export`` lines for the worker environment after
    the profile's own prologue.
    """
    directives = list(profile.job_extra_directives)
    worker_arguments: list[str] = []
    if profile.gpus_per_job > 0:
        directives.append(_gres(profile))
        worker_arguments += ["--resources", f"{GPU_RESOURCE}=1"]

    exports = [
        f"export {name}={shlex.quote(value)}"
        for name, value in sorted(slurm_worker_environment(profile).items())
    ]
    arguments: dict[str, Any] = {
        "cores": profile.cores_per_job,
        "processes": profile.worker_processes,
        "memory": profile.memory_per_job,
        "walltime": profile.walltime,
        "job_name": profile.job_name,
        "job_extra_directives": directives,
        "job_script_prologue": [*profile.job_script_prologue, *exports],
        "worker_extra_args": worker_arguments,
        "worker_command": _GPU_WORKER_COMMAND if profile.gpus_per_job > 0 else _CPU_WORKER_COMMAND,
    }
    optional = {
        "queue": profile.partition,
        "account": profile.account,
        "interface": profile.interface,
        "local_directory": profile.local_directory,
        "log_directory": profile.log_directory,
        "python": profile.python,
    }
    arguments.update({key: value for key, value in optional.items() if value is not None})
    return arguments


def slurm_job_script(profile: SlurmProfile) -> str:
    """Generate the batch script that each SLURM job of the profile runs.

    Builds the script from dask-jobqueue's ``SLURMJob`` without a scheduler or
    SLURM, so the scheduler address is a placeholder.

    Raises
    ------
    MissingBackendError
        If dask-jobqueue is not installed (extra ``slurm``).
    """
    slurm = import_backend("dask_jobqueue.slurm", "slurm", profile_kind="slurm")
    job = slurm.SLURMJob(
        scheduler="tcp://<scheduler-address>:8786",
        name=f"{profile.job_name}-worker",
        **slurm_cluster_arguments(profile),
    )
    return job.job_script()


def create_slurm_cluster(profile: SlurmProfile) -> SpecCluster:
    """Start the scheduler here and submit worker jobs to SLURM.

    Raises
    ------
    MissingBackendError
        If dask-jobqueue is not installed (extra ``slurm``).
    """
    jobqueue = import_backend("dask_jobqueue", "slurm", profile_kind="slurm")
    logger.info(
        "starting SLURMCluster: %d-%d jobs of %d cores, %d GPUs",
        profile.min_jobs,
        profile.max_jobs,
        profile.cores_per_job,
        profile.gpus_per_job,
    )
    return jobqueue.SLURMCluster(scheduler_options=dict(profile.scheduler_options), **slurm_cluster_arguments(profile))
