"""local-gpu: fail-fast without a GPU, the missing extra, and the worker environment."""

import os
import sys

import pytest
from distributed import Client, LocalCluster

from cluster import (
    GPUNotFoundError,
    MissingBackendError,
    WORKER_CORES_VARIABLE,
    describe_profile,
    load_profile,
    parse_profile,
    start_cluster,
)
from cluster.local_gpu import _cuda_cluster_class, merge_worker_environment


def _machine_has_nvidia_gpu() -> bool:
    return any(os.path.exists(f"/dev/nvidia{index}") for index in range(8))


def test_local_gpu_without_gpu_fails_fast():
    pytest.importorskip("dask_cuda", reason="dask-cuda (extra gpu) is not installed")
    if _machine_has_nvidia_gpu():
        pytest.skip("this machine has an NVIDIA GPU, so local-gpu would start")

    with pytest.raises(GPUNotFoundError, match=r"'local-gpu' \(kind local-gpu\) found no usable NVIDIA GPU.*profile 'local'"):
        with start_cluster(load_profile("local-gpu")):
            pass


def test_local_gpu_without_dask_cuda_names_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "dask_cuda", None)

    with pytest.raises(MissingBackendError, match=r"pip install 'fleximo-pipeline\[gpu\]'"):
        with start_cluster(load_profile("local-gpu")):
            pass


def test_describe_local_gpu():
    text = describe_profile(parse_profile({"kind": "local-gpu", "devices": [0, 2], "memory_limit": "32GiB"}, name="two"))

    assert "GPUs: 0,2 (CUDA_VISIBLE_DEVICES), one worker per GPU" in text
    assert "workers: 2 x 2 threads, memory limit 32.00 GiB each" in text
    assert "worker resources: GPU=1" in text


def test_merge_keeps_worker_variables():
    spec = {
        0: {"cls": "Nanny", "options": {"env": {"CUDA_VISIBLE_DEVICES": "1,0"}}},
        1: {"cls": "Nanny", "options": {}},
    }

    merged = merge_worker_environment(spec, {"OMP_NUM_THREADS": "4", "CUDA_VISIBLE_DEVICES": "9"})

    assert merged[0]["options"]["env"] == {"OMP_NUM_THREADS": "4", "CUDA_VISIBLE_DEVICES": "1,0"}
    assert merged[1]["options"]["env"] == {"OMP_NUM_THREADS": "4", "CUDA_VISIBLE_DEVICES": "9"}


def read_cores_variable() -> str | None:
    return os.environ.get(WORKER_CORES_VARIABLE)


def test_cluster_subclass_adds_environment():
    """New workers of the subclass get the environment, as dask-cuda's workers would."""
    cluster_class = _cuda_cluster_class(LocalCluster)

    with cluster_class(
        {WORKER_CORES_VARIABLE: "3"},
        n_workers=0,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        scheduler_kwargs={"dashboard": False},
    ) as cluster, Client(cluster) as client:
        cluster.scale(1)
        client.wait_for_workers(1, timeout=60)
        values = client.run(read_cores_variable)

    assert list(values.values()) == ["3"]
