"""Cluster profile models, one pydantic class per backend, selected by ``kind``.

The ``kind`` field selects the backend and everything else sizes the workers.
The same job file runs on a workstation, under SLURM or on Kubernetes by
changing only the profile.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeAlias

from dask.utils import parse_bytes
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    field_validator,
    model_validator,
)

def _parse_byte_size(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, str):
        try:
            return int(parse_bytes(value))
        except ValueError:
            raise ValueError(
                f"{value!r} is not a byte size; write it as a number with a unit, "
                "e.g. '16GiB', '64 GB' or '32Gi'"
            ) from None
    return value


def _environment_value(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError(
            f"environment value {value!r} is a YAML boolean; quote it, e.g. 'YES' or 'TRUE', "
            "so the variable gets the text the program expects"
        )
    if isinstance(value, (int, float)):
        return str(value)
    return value


EnvironmentValue: TypeAlias = Annotated[str, BeforeValidator(_environment_value)]
"""Environment variable value; YAML numbers become text, booleans must be quoted."""

ByteSize: TypeAlias = Annotated[PositiveInt, BeforeValidator(_parse_byte_size)]
"""Size in bytes, written in YAML as ``16GiB``, ``64 GB``, ``32Gi`` or an integer."""

_SLURM_MEMORY_OPTIONS = ("--mem", "--mem-per-cpu", "--mem-per-gpu")
_SLURM_GENERATED_OPTIONS = ("--gres", "--gpus", "--gpus-per-node", "--gpus-per-task", "--cpus-per-task")
_WALLTIME = re.compile(r"^(\d+-)?\d{1,3}:\d{2}(:\d{2})?$")
_KUBERNETES_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$")
PROFILE_KINDS = ("local", "local-gpu", "slurm", "kubernetes", "address")
"""Values of the ``kind`` field, one per backend."""
_SCHEDULER_SCHEMES = ("tcp://", "tls://", "ucx://", "ws://", "wss://", "inproc://")


class _ProfileBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = ""
    """Profile name; ``load_profile`` fills it from the file name when empty."""
    description: str = ""
    environment: dict[str, EnvironmentValue] = Field(default_factory=dict)
    """Extra worker environment variables; they replace the defaults of the same name."""
    start_timeout_s: float = Field(default=120.0, gt=0)
    """Seconds to wait for the first worker (and its GPU check) at start."""

    @property
    def requires_gpu(self) -> bool:
        """Whether the workers must see a GPU; start fails fast when they do not."""
        return False


class LocalProfile(_ProfileBase):
    """Worker processes on this machine with ``distributed.LocalCluster``.

    Unset sizes are derived from the machine's cores and memory (see
    :func:`cluster.local.local_worker_layout`).
    """

    kind: Literal["local"]
    n_workers: PositiveInt | None = None
    threads_per_worker: PositiveInt | None = None
    memory_limit: ByteSize | Literal["auto"] = "auto"
    """Memory limit per worker; ``auto`` splits the machine's memory evenly."""
    gpu_resource: bool = False
    """Advertise ``GPU=1`` on every worker; set it only where each worker owns a GPU."""
    dashboard_address: str | None = None
    """Dashboard address such as ``:8787``; None starts no dashboard."""


class LocalGPUProfile(_ProfileBase):
    """One worker per GPU on this machine with dask-cuda's ``LocalCUDACluster``."""

    kind: Literal["local-gpu"]
    devices: list[NonNegativeInt] | None = None
    """GPU indices to use (``CUDA_VISIBLE_DEVICES``); None uses every visible GPU."""
    threads_per_worker: PositiveInt = 2
    """Task threads per GPU worker: one runs the model, the others read and write."""
    memory_limit: ByteSize | Literal["auto"] = "auto"
    """Host memory limit per worker; ``auto`` splits the machine's memory per GPU."""
    rmm_pool_size: ByteSize | None = None
    dashboard_address: str | None = None

    @property
    def requires_gpu(self) -> bool:
        """Always true: every worker of this profile must see its GPU."""
        return True


class SlurmProfile(_ProfileBase):
    """Batch jobs under SLURM with dask-jobqueue's ``SLURMCluster``.

    Each job runs one worker per GPU (dask-cuda's worker command pins each to
    its device) or, for CPU jobs, ``processes_per_job`` workers. Jobs are added
    and removed adaptively between ``min_jobs`` and ``max_jobs``.
    """

    kind: Literal["slurm"]
    partition: str | None = None
    account: str | None = None
    walltime: str = "02:00:00"
    cores_per_job: PositiveInt
    memory_per_job: ByteSize
    """Host memory per job; the only memory directive in the batch script (``--mem``)."""
    gpus_per_job: NonNegativeInt = 1
    gpu_type: str | None = None
    """GPU model in the gres request, e.g. ``a100`` gives ``--gres=gpu:a100:N``."""
    processes_per_job: PositiveInt | None = None
    """Worker processes per job; defaults to one per GPU, or one for CPU jobs."""
    min_jobs: NonNegativeInt = 0
    max_jobs: PositiveInt = 1
    job_name: str = "fleximo"
    job_script_prologue: list[str] = Field(default_factory=list)
    """Shell lines run before the worker starts, e.g. ``module load cuda``."""
    job_extra_directives: list[str] = Field(default_factory=list)
    """Extra ``#SBATCH`` options such as ``--qos=normal``; memory and GPU options are generated."""
    interface: str | None = None
    local_directory: str | None = None
    log_directory: str | None = None
    python: str | None = None
    """Python on the compute nodes; defaults to the one running the scheduler."""
    scheduler_options: dict[str, Any] = Field(default_factory=dict)
    """Arguments of the scheduler started here, e.g. ``{"dashboard_address": ":8787"}``."""
    start_timeout_s: float = Field(default=1800.0, gt=0)

    @property
    def requires_gpu(self) -> bool:
        """Whether the jobs request GPUs."""
        return self.gpus_per_job > 0

    @property
    def worker_processes(self) -> int:
        """Worker processes per job."""
        if self.processes_per_job is not None:
            return self.processes_per_job
        return max(1, self.gpus_per_job)

    @field_validator("walltime")
    @classmethod
    def _check_walltime(cls, value: str) -> str:
        if not _WALLTIME.match(value):
            raise ValueError(
                f"walltime {value!r} is not a SLURM time limit; write it as "
                "'HH:MM:SS' or 'D-HH:MM:SS', e.g. '02:00:00'"
            )
        return value

    @field_validator("job_extra_directives")
    @classmethod
    def _check_directives(cls, directives: list[str]) -> list[str]:
        for directive in directives:
            option = directive.strip().split("=", 1)[0].split(" ", 1)[0]
            if option in _SLURM_MEMORY_OPTIONS:
                raise ValueError(
                    f"job_extra_directives contains {directive!r}, but the script already "
                    "requests memory_per_job with --mem. SLURM rejects --mem together with "
                    "--mem-per-cpu or --mem-per-gpu, and a second --mem replaces the first. "
                    "Set the job's memory with memory_per_job and remove this directive"
                )
            if option in _SLURM_GENERATED_OPTIONS:
                raise ValueError(
                    f"job_extra_directives contains {directive!r}, which the profile "
                    "generates from gpus_per_job, gpu_type and cores_per_job; set those "
                    "fields and remove this directive"
                )
        return directives

    @model_validator(mode="after")
    def _check_layout(self) -> SlurmProfile:
        if self.max_jobs < self.min_jobs:
            raise ValueError(
                f"max_jobs={self.max_jobs} is below min_jobs={self.min_jobs}; "
                "raise max_jobs or lower min_jobs"
            )
        if self.gpus_per_job > 0 and self.worker_processes != self.gpus_per_job:
            raise ValueError(
                f"processes_per_job={self.processes_per_job} differs from "
                f"gpus_per_job={self.gpus_per_job}; GPU jobs run one worker per GPU, "
                "so remove processes_per_job"
            )
        if self.cores_per_job < self.worker_processes:
            raise ValueError(
                f"cores_per_job={self.cores_per_job} is fewer than the "
                f"{self.worker_processes} worker processes per job; each worker needs "
                "at least one core"
            )
        return self


class KubernetesProfile(_ProfileBase):
    """Worker pods on Kubernetes through the dask-kubernetes operator.

    Each worker pod requests ``gpus_per_worker`` GPUs (``nvidia.com/gpu``), its
    cores and memory, and scales adaptively between ``min_workers`` and
    ``max_workers``.
    """

    kind: Literal["kubernetes"]
    cluster_name: str = "fleximo"
    namespace: str | None = None
    image: str
    """Container image with fleximo-pipeline installed, for scheduler and workers."""
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    gpus_per_worker: NonNegativeInt = 1
    cores_per_worker: PositiveInt = 8
    memory_per_worker: ByteSize
    threads_per_worker: PositiveInt | None = None
    """Task threads per worker; defaults to 2 for GPU workers, else ``cores_per_worker``."""
    min_workers: NonNegativeInt = 0
    max_workers: PositiveInt = 1
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    scheduler_cores: PositiveInt = 1
    scheduler_memory: ByteSize = 4 * 2**30
    idle_timeout_s: NonNegativeInt = 0
    """Seconds the scheduler may stay idle before the operator deletes the cluster; 0 never."""
    start_timeout_s: float = Field(default=600.0, gt=0)

    @property
    def requires_gpu(self) -> bool:
        """Whether the worker pods request GPUs."""
        return self.gpus_per_worker > 0

    @property
    def worker_threads(self) -> int:
        """Task threads per worker."""
        if self.threads_per_worker is not None:
            return self.threads_per_worker
        return 2 if self.gpus_per_worker > 0 else self.cores_per_worker

    @field_validator("cluster_name")
    @classmethod
    def _check_cluster_name(cls, value: str) -> str:
        if not _KUBERNETES_NAME.match(value):
            raise ValueError(
                f"cluster_name {value!r} is not a valid Kubernetes name; use at most "
                "40 lower-case letters, digits and '-', starting and ending with a "
                "letter or digit"
            )
        return value

    @model_validator(mode="after")
    def _check_scaling(self) -> KubernetesProfile:
        if self.max_workers < self.min_workers:
            raise ValueError(
                f"max_workers={self.max_workers} is below min_workers={self.min_workers}; "
                "raise max_workers or lower min_workers"
            )
        return self


class GatewaySettings(BaseModel):
    """Dask Gateway server and the cluster to connect to or create."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: str
    cluster_name: str | None = None
    """Name of a running gateway cluster; None creates a new one."""
    workers: NonNegativeInt = 0
    """Workers to request when a new gateway cluster is created."""


class AddressProfile(_ProfileBase):
    """A running scheduler (``tcp://host:8786``) or a Dask Gateway.

    The workers exist already, so only settings that take effect at run time
    reach them: the cloud-read environment is set in each worker process.
    """

    kind: Literal["address"]
    address: str | None = None
    gateway: GatewaySettings | None = None
    require_gpu: bool = False
    """Fail at start unless a worker advertises ``GPU`` and each such worker has CUDA."""

    @property
    def requires_gpu(self) -> bool:
        """Whether the profile requires a GPU worker."""
        return self.require_gpu

    @field_validator("address")
    @classmethod
    def _check_address(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(_SCHEDULER_SCHEMES):
            raise ValueError(
                f"address {value!r} has no scheduler protocol; write it as "
                "'tcp://host:8786' (or tls://, ucx://, ws://, wss://)"
            )
        return value

    @model_validator(mode="after")
    def _check_target(self) -> AddressProfile:
        if (self.address is None) == (self.gateway is None):
            raise ValueError(
                "set exactly one of address (a running scheduler) and gateway "
                "(a Dask Gateway server)"
            )
        return self


ClusterProfile: TypeAlias = Annotated[
    LocalProfile | LocalGPUProfile | SlurmProfile | KubernetesProfile | AddressProfile,
    Field(discriminator="kind"),
]
"""Any cluster profile; ``kind`` selects the class."""

