"""Environment that every worker process starts with, and the torch thread count.

All backends start workers with the same settings. BLAS and OpenMP threads
match the worker's share of cores, and GDAL and fsspec are tuned for reads from
object storage and HTTP. The worker's core count is exported too, so that a
task can size torch's thread pool from inside the worker.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

import dask.config
from distributed import Worker, get_worker

WORKER_CORES_VARIABLE = "FLEXIMO_WORKER_CORES"
"""Environment variable with the number of CPU cores a worker process may use."""

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
"""Thread-count variables of OpenMP, MKL and OpenBLAS, set to the per-task share."""

_GDAL_CACHE_FRACTION = 0.05
_GDAL_CACHE_MIN_MB = 64
_GDAL_CACHE_MAX_MB = 1024

# Reads of COGs and JPEG2000 over HTTP or S3: skip directory listings on open,
# merge neighbouring byte ranges into one request, keep a per-file block
# cache and retry transient HTTP errors (GDAL configuration options, GDAL 3.10).
CLOUD_READ_ENVIRONMENT: dict[str, str] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_HTTP_MULTIRANGE": "YES",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MAX_RETRY": "5",
    "GDAL_HTTP_RETRY_DELAY": "1",
    "GDAL_INGESTED_BYTES_AT_OPEN": "32768",
    "VSI_CACHE": "TRUE",
    "VSI_CACHE_SIZE": str(32 * 2**20),
    "CPL_VSIL_CURL_CACHE_SIZE": str(128 * 2**20),
    # fsspec reads FSSPEC_<PROTOCOL> as JSON default arguments of that file
    # system: 8 MiB read blocks instead of s3fs' 50 MiB, which would fetch
    # far more than one Zarr chunk or COG tile per random read.
    "FSSPEC_S3": json.dumps({"default_block_size": 8 * 2**20}),
}


# glibc malloc settings of a worker process. Dask's nanny starts workers with
# MALLOC_TRIM_THRESHOLD_=65536, and setting it also turns off glibc's adaptive
# mmap threshold. Every allocation over 128 KiB is then a fresh mmap whose
# pages fault in and are zeroed on first touch, and torch allocates its
# activations on every call: the model ran at half speed in a worker
# (docs/benchmarks.md). With the mmap threshold at 32 MiB, the most that
# glibc's own adaptive threshold reaches, such allocations are reused from
# the heap. Larger ones still get fresh mappings; the inference stage reuses
# its per-block arrays itself (pipeline/scratch.py). A threshold of 128 MiB
# did that for every array, and in one trial raised the peak memory of the
# stage at 4096 px by 14 % over that at 2048 px. The trim threshold of
# 256 MiB keeps that much freed heap instead of returning it to the kernel
# after every task, where each block task faulted its arrays in again. That
# made the stage 10-14 % faster and raised its peak memory by 14-19 %.
MALLOC_ENVIRONMENT: dict[str, str] = {
    "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20),
    "MALLOC_TRIM_THRESHOLD_": str(256 * 2**20),
}

# The nanny copies distributed.nanny.pre-spawn-environ into the environment
# of each worker process it spawns, after the environment it was started
# with, so a job script or pod sets the malloc variables there too.
PRE_SPAWN_VARIABLE = "DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON"


def torch_threads_per_task(worker_cores: int, threads_per_worker: int) -> int:
    """Return the torch intra-op thread count for each task thread of a worker.

    A worker runs ``threads_per_worker`` tasks at once, so each task gets an
    equal share of the worker's cores, and at least one thread.
    """
    return max(1, worker_cores // max(1, threads_per_worker))


def gdal_cache_mb(memory_limit_bytes: int | None) -> int:
    """Return a GDAL block cache size (MB) of about 5 % of the worker memory limit."""
    if not memory_limit_bytes:
        return 256
    size_mb = int(memory_limit_bytes * _GDAL_CACHE_FRACTION / 2**20)
    return min(_GDAL_CACHE_MAX_MB, max(_GDAL_CACHE_MIN_MB, size_mb))


def worker_environment(
    *,
    worker_cores: int,
    threads_per_worker: int,
    memory_limit_bytes: int | None,
    overrides: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Build the environment variables a worker process starts with.

    Parameters
    ----------
    worker_cores
        CPU cores the worker process may use.
    threads_per_worker
        Task threads of the worker (Dask ``nthreads``).
    memory_limit_bytes
        Worker memory limit in bytes, or None where the worker has none; sizes
        the GDAL block cache.
    overrides
        Variables from the profile's ``environment``; they replace the defaults.

    Returns
    -------
    dict of str to str
        Variable name to value, ready for a job script, a pod spec or a nanny.
    """
    threads = str(torch_threads_per_task(worker_cores, threads_per_worker))
    environment = {name: threads for name in THREAD_VARIABLES}
    environment[WORKER_CORES_VARIABLE] = str(worker_cores)
    environment["GDAL_CACHEMAX"] = str(gdal_cache_mb(memory_limit_bytes))
    environment.update(CLOUD_READ_ENVIRONMENT)
    environment.update(MALLOC_ENVIRONMENT)
    environment.update(overrides or {})
    malloc = {name: environment[name] for name in MALLOC_ENVIRONMENT}
    environment.setdefault(PRE_SPAWN_VARIABLE, json.dumps(malloc, sort_keys=True))
    return environment


def nanny_spawn_config(environment: Mapping[str, str]) -> dict[str, Any]:
    """Return the Dask configuration that makes nannies spawn workers with the malloc settings of ``environment``.

    A nanny reads ``distributed.nanny.pre-spawn-environ`` when it is created,
    so create the cluster inside ``dask.config.set(nanny_spawn_config(...))``.
    glibc reads its variables when a process starts, which is before a
    nanny's ``env`` argument is applied, so they must come from there.
    :func:`spawn_settings` also overrides what ``os.environ`` holds.
    """
    spawn = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    spawn.update({name: environment[name] for name in MALLOC_ENVIRONMENT if name in environment})
    return {"distributed.nanny.pre-spawn-environ": spawn}


@contextlib.contextmanager
def spawn_settings(environment: Mapping[str, str]) -> Iterator[None]:
    """Make the nannies created inside spawn workers with the malloc settings of ``environment``.

    Sets :func:`nanny_spawn_config` and, for its duration, the same variables
    in ``os.environ``. A nanny takes a variable that ``os.environ`` has over
    the configured one, and leaves what it spawned with in ``os.environ``. So
    a ``LocalCluster`` started earlier in the process with Dask's defaults
    would otherwise start these workers with ``MALLOC_TRIM_THRESHOLD_=65536``.
    """
    malloc = {name: environment[name] for name in MALLOC_ENVIRONMENT if name in environment}
    with environment_variables(malloc), dask.config.set(nanny_spawn_config(environment)):
        yield


@contextlib.contextmanager
def environment_variables(variables: Mapping[str, str]) -> Iterator[None]:
    """Set ``variables`` in ``os.environ``, and restore their earlier values (or absence) on exit."""
    previous = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def torch_threads_for_worker(worker: Worker) -> int:
    """Return the torch thread count a task on ``worker`` should use.

    Call it inside the task and pass the result to ``torch.set_num_threads``:
    torch keeps the thread count per calling thread, and Dask starts workers
    with ``OMP_NUM_THREADS=1``, so setting it once per worker does not reach the
    task threads.

    The worker's cores come from ``FLEXIMO_WORKER_CORES``, which every backend
    of this package sets. A worker started some other way is assumed to own
    one core per task thread, Dask's default layout, and gets one thread.

    Raises
    ------
    ValueError
        If ``FLEXIMO_WORKER_CORES`` is set but is not a positive integer.
    """
    threads_per_worker = worker.state.nthreads
    raw_cores = os.environ.get(WORKER_CORES_VARIABLE)
    if raw_cores is None:
        return 1

    try:
        worker_cores = int(raw_cores)
    except ValueError:
        worker_cores = 0
    if worker_cores < 1:
        raise ValueError(
            f"{WORKER_CORES_VARIABLE}={raw_cores!r} on worker {worker.address} is not a "
            "positive integer; set it to the number of CPU cores the worker may use "
            "or unset it."
        )
    return torch_threads_per_task(worker_cores, threads_per_worker)


def worker_threads() -> int:
    """Return :func:`torch_threads_for_worker` for the worker running this task.

    Raises
    ------
    ValueError
        If called outside a Dask worker.
    """
    return torch_threads_for_worker(get_worker())
