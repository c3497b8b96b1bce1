"""GPU workers: which workers advertise the ``GPU`` resource, and whether they see one."""

from __future__ import annotations

import logging
import os
from typing import Any

from distributed import Client

logger = logging.getLogger(__name__)

GPU_RESOURCE = "GPU"
"""Dask worker resource that model tasks request, one unit per GPU."""


class GPUNotFoundError(RuntimeError):
    """Raised when a GPU profile starts but its workers see no GPU."""


def gpu_workers(client: Client) -> list[str]:
    """Return the addresses of the workers that advertise the ``GPU`` resource, sorted.

    Model tasks carry ``resources={"GPU": 1}`` only when this list is not
    empty; otherwise no worker could ever run them.
    """
    workers = client.scheduler_info(n_workers=-1)["workers"]
    return sorted(
        address
        for address, info in workers.items()
        if (info.get("resources") or {}).get(GPU_RESOURCE, 0) >= 1
    )


def probe_gpu() -> dict[str, Any]:
    """Return the CUDA devices visible to torch in this process; runs on a worker."""
    import torch

    available = torch.cuda.is_available()
    return {
        "cuda_available": available,
        "device_count": torch.cuda.device_count() if available else 0,
        "device_name": torch.cuda.get_device_name(0) if available else None,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


def check_gpu_workers(
    client: Client,
    *,
    profile_name: str,
    timeout_s: float,
    only_gpu_resource: bool = False,
) -> None:
    """Fail unless the workers see a CUDA device.

    Waits up to ``timeout_s`` seconds for the first worker, then runs
    :func:`probe_gpu` on each worker. A GPU profile must not quietly fall back to CPU.
    With ``only_gpu_resource``, only workers that advertise the ``GPU``
    resource are checked, for clusters that mix CPU and GPU workers.

    Raises
    ------
    GPUNotFoundError
        If no worker joins in time, or a worker finds no CUDA device.
    """
    try:
        client.wait_for_workers(1, timeout=timeout_s)
    except TimeoutError as error:
        raise GPUNotFoundError(
            f"cluster profile {profile_name!r} started no worker within {timeout_s:g} s, "
            "so its GPUs could not be checked; look at the worker logs (for SLURM the "
            "job output files) or raise start_timeout_s"
        ) from error

    workers = gpu_workers(client) if only_gpu_resource else None
    reports = client.run(probe_gpu, workers=workers)
    without_gpu = sorted(address for address, report in reports.items() if not report["cuda_available"])
    if without_gpu:
        report = reports[without_gpu[0]]
        raise GPUNotFoundError(
            f"cluster profile {profile_name!r} requires GPU workers, but torch on "
            f"{len(without_gpu)} of {len(reports)} workers ({', '.join(without_gpu)}) "
            f"sees no CUDA device (CUDA_VISIBLE_DEVICES={report['cuda_visible_devices']!r}). "
            "Install a CUDA build of torch on the workers and request GPUs for them, "
            "or use a CPU profile such as 'local'."
        )
    for address, report in sorted(reports.items()):
        logger.info("worker %s sees %d CUDA device(s): %s", address, report["device_count"], report["device_name"])
