"""Worker environment: thread counts, GDAL and fsspec settings, overrides."""

import json

import dask.config
import pytest

from cluster.environment import (
    CLOUD_READ_ENVIRONMENT,
    MALLOC_ENVIRONMENT,
    PRE_SPAWN_VARIABLE,
    THREAD_VARIABLES,
    WORKER_CORES_VARIABLE,
    gdal_cache_mb,
    nanny_spawn_config,
    torch_threads_per_task,
    worker_environment,
)


@pytest.mark.parametrize(
    ("worker_cores", "threads_per_worker", "torch_threads"),
    [(1, 1, 1), (8, 1, 8), (8, 2, 4), (8, 3, 2), (2, 4, 1), (16, 16, 1)],
)
def test_torch_threads_per_task(worker_cores, threads_per_worker, torch_threads):
    assert torch_threads_per_task(worker_cores, threads_per_worker) == torch_threads


@pytest.mark.parametrize(
    ("memory_limit_bytes", "cache_mb"),
    [(None, 256), (0, 256), (512 * 2**20, 64), (8 * 2**30, 409), (64 * 2**30, 1024)],
)
def test_gdal_cache_sized_from_memory(memory_limit_bytes, cache_mb):
    assert gdal_cache_mb(memory_limit_bytes) == cache_mb


def test_environment_threads_match_share():
    environment = worker_environment(worker_cores=8, threads_per_worker=2, memory_limit_bytes=16 * 2**30)

    for variable in THREAD_VARIABLES:
        assert environment[variable] == "4"
    assert environment[WORKER_CORES_VARIABLE] == "8"
    assert environment["GDAL_CACHEMAX"] == "819"


def test_environment_has_cloud_read_settings():
    environment = worker_environment(worker_cores=1, threads_per_worker=1, memory_limit_bytes=None)

    assert environment["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR"
    assert environment["GDAL_HTTP_MERGE_CONSECUTIVE_RANGES"] == "YES"
    assert environment["VSI_CACHE"] == "TRUE"
    assert json.loads(environment["FSSPEC_S3"]) == {"default_block_size": 8 * 2**20}
    assert set(CLOUD_READ_ENVIRONMENT) <= set(environment)


def test_environment_values_are_strings():
    environment = worker_environment(worker_cores=4, threads_per_worker=1, memory_limit_bytes=2**30)

    assert all(isinstance(value, str) for value in environment.values())


def test_profile_overrides_defaults():
    environment = worker_environment(
        worker_cores=8,
        threads_per_worker=1,
        memory_limit_bytes=None,
        overrides={"GDAL_CACHEMAX": "2048", "OMP_NUM_THREADS": "2", "AWS_REQUEST_PAYER": "requester"},
    )

    assert environment["GDAL_CACHEMAX"] == "2048"
    assert environment["OMP_NUM_THREADS"] == "2"
    assert environment["MKL_NUM_THREADS"] == "8"
    assert environment["AWS_REQUEST_PAYER"] == "requester"


def test_malloc_set_before_spawn():
    environment = worker_environment(worker_cores=2, threads_per_worker=1, memory_limit_bytes=None)

    for variable, value in MALLOC_ENVIRONMENT.items():
        assert environment[variable] == value
    # A job script exports the variables, and Dask reads the nanny's spawn settings from them.
    config = dask.config.collect_env({PRE_SPAWN_VARIABLE: environment[PRE_SPAWN_VARIABLE]})
    assert config["distributed"]["nanny"]["pre_spawn_environ"] == MALLOC_ENVIRONMENT


def test_malloc_override_reaches_spawn():
    environment = worker_environment(
        worker_cores=2, threads_per_worker=1, memory_limit_bytes=None,
        overrides={"MALLOC_TRIM_THRESHOLD_": "1048576"},
    )

    assert json.loads(environment[PRE_SPAWN_VARIABLE])["MALLOC_TRIM_THRESHOLD_"] == "1048576"
    assert nanny_spawn_config(environment)["distributed.nanny.pre-spawn-environ"]["MALLOC_TRIM_THRESHOLD_"] == "1048576"


def test_spawn_config_keeps_dask_settings():
    with dask.config.set({"distributed.nanny.pre-spawn-environ": {"OMP_NUM_THREADS": 1, "MALLOC_TRIM_THRESHOLD_": 65536}}):
        spawn = nanny_spawn_config(MALLOC_ENVIRONMENT)["distributed.nanny.pre-spawn-environ"]

    assert spawn["OMP_NUM_THREADS"] == 1
    assert spawn["MALLOC_MMAP_THRESHOLD_"] == MALLOC_ENVIRONMENT["MALLOC_MMAP_THRESHOLD_"]
