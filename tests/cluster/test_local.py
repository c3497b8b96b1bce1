"""Local backends: worker layout, a real LocalCluster, and local-gpu without a GPU."""

import os
import sys

import cloudpickle
import pytest
from dask.system import CPU_COUNT
from distributed import get_worker

from cluster import (
    WORKER_CORES_VARIABLE,
    describe_profile,
    gpu_workers,
    load_profile,
    parse_profile,
    start_cluster,
    torch_threads_for_worker,
)
from cluster.environment import MALLOC_ENVIRONMENT
from cluster.local import local_worker_layout

# Workers cannot import this test module, so its task functions travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

GIB = 2**30


def report_worker() -> dict:
    """Run torch with the worker's thread share; return the worker's pid, threads and environment."""
    import torch

    worker = get_worker()
    threads = torch_threads_for_worker(worker)
    torch.set_num_threads(threads)
    product = torch.ones(64, 64) @ torch.ones(64, 64)
    return {
        "address": worker.address,
        "pid": os.getpid(),
        "torch_threads": threads,
        "torch_num_threads": torch.get_num_threads(),
        "product": float(product[0, 0]),
        "environment": dict(os.environ),
        "start_environment": _start_environment(),
    }


def _start_environment() -> dict[str, str]:
    """The environment this process was started with, which is what glibc's malloc reads."""
    with open("/proc/self/environ", "rb") as handle:
        entries = handle.read().decode(errors="replace").split("\0")
    return dict(entry.split("=", 1) for entry in entries if "=" in entry)


@pytest.mark.parametrize(
    ("fields", "cores", "layout"),
    [
        ({}, 2, (2, 1, 8 * GIB, 1)),
        ({}, 4, (4, 1, 4 * GIB, 1)),
        ({}, 16, (4, 4, 4 * GIB, 4)),
        ({"n_workers": 2}, 16, (2, 8, 8 * GIB, 8)),
        ({"threads_per_worker": 4}, 16, (4, 4, 4 * GIB, 4)),
        ({"n_workers": 1, "threads_per_worker": 1}, 16, (1, 1, 16 * GIB, 16)),
        ({"n_workers": 3, "memory_limit": "2GiB"}, 2, (3, 1, 2 * GIB, 1)),
    ],
)
def test_worker_layout_from_machine(fields, cores, layout):
    profile = parse_profile({"kind": "local", **fields})

    result = local_worker_layout(profile, cores=cores, memory_bytes=16 * GIB)

    assert (result.n_workers, result.threads_per_worker, result.memory_limit_bytes, result.worker_cores) == layout


@pytest.mark.parametrize(("fields", "torch_threads"), [({"n_workers": 1, "threads_per_worker": 1}, 16), ({}, 1)])
def test_layout_torch_threads(fields, torch_threads):
    profile = parse_profile({"kind": "local", **fields})

    assert local_worker_layout(profile, cores=16, memory_bytes=16 * GIB).torch_threads == torch_threads


def test_describe_local_layout():
    profile = load_profile("local")
    layout = local_worker_layout(profile)

    text = describe_profile(profile)

    assert f"workers: {layout.n_workers} x {layout.threads_per_worker} threads" in text
    assert f"{WORKER_CORES_VARIABLE}={layout.worker_cores}" in text
    assert "GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR" in text
    assert "worker resources: none" in text


@pytest.fixture(scope="module")
def local_run():
    """Start the bundled local profile, run a task on every worker, and close it."""
    profile = load_profile("local")
    layout = local_worker_layout(profile)

    with start_cluster(profile) as client:
        info = client.scheduler_info(n_workers=-1)["workers"]
        workers = sorted(info)
        futures = [client.submit(report_worker, workers=[address], pure=False) for address in workers]
        reports = client.gather(futures)
        gpu_addresses = gpu_workers(client)
    yield {"client": client, "layout": layout, "info": info, "reports": reports, "gpu": gpu_addresses}


def test_local_sized_from_machine(local_run):
    layout = local_run["layout"]
    info = local_run["info"]

    assert len(info) == layout.n_workers
    for worker in info.values():
        assert worker["nthreads"] == layout.threads_per_worker
        assert worker["memory_limit"] == layout.memory_limit_bytes


def test_local_workers_are_processes(local_run):
    pids = {report["pid"] for report in local_run["reports"]}

    assert os.getpid() not in pids
    assert len(pids) == local_run["layout"].n_workers


def test_local_worker_environment(local_run):
    layout = local_run["layout"]

    for report in local_run["reports"]:
        environment = report["environment"]
        assert environment[WORKER_CORES_VARIABLE] == str(layout.worker_cores)
        assert environment["OMP_NUM_THREADS"] == str(layout.torch_threads)
        assert environment["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR"
        assert "FSSPEC_S3" in environment


def test_workers_start_with_malloc(local_run):
    for report in local_run["reports"]:
        started_with = report["start_environment"]
        for variable, value in MALLOC_ENVIRONMENT.items():
            assert started_with.get(variable) == value, variable


def test_malloc_wins_over_an_earlier_cluster(monkeypatch):
    # A LocalCluster started earlier in the process with Dask's defaults leaves them in os.environ.
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")

    with start_cluster(load_profile("local")) as client:
        started_with = list(client.run(_start_environment).values())

    for environment in started_with:
        assert environment["MALLOC_TRIM_THRESHOLD_"] == MALLOC_ENVIRONMENT["MALLOC_TRIM_THRESHOLD_"]
    assert os.environ["MALLOC_TRIM_THRESHOLD_"] == "65536"


def test_local_task_torch_threads(local_run):
    layout = local_run["layout"]

    for report in local_run["reports"]:
        assert report["torch_threads"] == layout.torch_threads
        assert report["torch_num_threads"] == layout.torch_threads
        assert report["product"] == 64.0


def test_local_has_no_gpu_workers(local_run):
    assert local_run["gpu"] == []


def test_local_closed_on_exit(local_run):
    assert local_run["client"].status == "closed"


def test_single_worker_gets_all_cores():
    profile = parse_profile(
        {"kind": "local", "n_workers": 1, "threads_per_worker": 1, "memory_limit": "2GiB", "gpu_resource": True},
        name="one-worker",
    )

    with start_cluster(profile) as client:
        report = client.submit(report_worker, pure=False).result()
        gpu_addresses = gpu_workers(client)

    assert report["torch_threads"] == CPU_COUNT
    assert report["torch_num_threads"] == CPU_COUNT
    assert gpu_addresses == [report["address"]]


def test_invalid_worker_cores_rejected():
    profile = parse_profile(
        {"kind": "local", "n_workers": 1, "threads_per_worker": 1, "environment": {WORKER_CORES_VARIABLE: "many"}},
        name="bad-cores",
    )

    with start_cluster(profile) as client:
        future = client.submit(report_worker, pure=False)
        with pytest.raises(ValueError, match=f"{WORKER_CORES_VARIABLE}='many' on worker .* is not a positive integer"):
            future.result()
