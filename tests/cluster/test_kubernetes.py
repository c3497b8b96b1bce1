"""Kubernetes DaskCluster specs built by dask-kubernetes, without a cluster."""

import sys

import pytest
import yaml

from cluster import MissingBackendError, describe_profile, load_profile, parse_profile
from cluster.kubernetes import GPU_DEVICE_RESOURCE, kubernetes_cluster_spec

pytest.importorskip("dask_kubernetes", reason="dask-kubernetes (extra kubernetes) is not installed")


def container(spec: dict, role: str) -> dict:
    return spec["spec"][role]["spec"]["containers"][0]


def environment(container_spec: dict) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container_spec["env"]}


def option(arguments: list[str], name: str) -> str:
    return arguments[arguments.index(name) + 1]


@pytest.fixture(scope="module")
def gpu_spec() -> dict:
    return kubernetes_cluster_spec(load_profile("kubernetes-gpu"))


def test_spec_is_dask_cluster(gpu_spec):
    assert gpu_spec["apiVersion"] == "kubernetes.dask.org/v1"
    assert gpu_spec["kind"] == "DaskCluster"
    assert gpu_spec["metadata"]["name"] == "fleximo"


def test_worker_requests_one_gpu(gpu_spec):
    resources = container(gpu_spec, "worker")["resources"]

    assert resources["limits"][GPU_DEVICE_RESOURCE] == 1
    assert resources["requests"][GPU_DEVICE_RESOURCE] == 1
    assert resources["limits"]["cpu"] == "8"
    assert resources["limits"]["memory"] == "61440Mi"


def test_worker_has_one_memory_limit(gpu_spec):
    arguments = container(gpu_spec, "worker")["args"]

    assert arguments.count("--memory-limit") == 1
    assert int(option(arguments, "--memory-limit")) == int(60 * 2**30 * 0.9)


def test_worker_resources_and_threads(gpu_spec):
    arguments = container(gpu_spec, "worker")["args"]

    assert arguments[:2] == ["dask", "worker"]
    assert option(arguments, "--resources") == "GPU=1"
    assert option(arguments, "--nthreads") == "2"


def test_worker_thread_settings(gpu_spec):
    variables = environment(container(gpu_spec, "worker"))

    assert variables["FLEXIMO_WORKER_CORES"] == "8"
    assert variables["OMP_NUM_THREADS"] == "4"
    assert variables["MKL_NUM_THREADS"] == "4"
    assert variables["OPENBLAS_NUM_THREADS"] == "4"
    assert variables["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR"


def test_scheduler_gets_no_gpu(gpu_spec):
    scheduler = container(gpu_spec, "scheduler")

    assert GPU_DEVICE_RESOURCE not in scheduler["resources"]["limits"]
    assert scheduler["resources"]["limits"] == {"cpu": "1", "memory": "4096Mi"}
    assert scheduler["env"] == []


def test_worker_tolerates_gpu_taint(gpu_spec):
    tolerations = gpu_spec["spec"]["worker"]["spec"]["tolerations"]

    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations


def test_describe_is_spec_as_yaml(gpu_spec):
    text = describe_profile(load_profile("kubernetes-gpu"))

    assert yaml.safe_load(text) == gpu_spec


def test_profile_settings_reach_spec():
    profile = parse_profile(
        {
            "kind": "kubernetes",
            "cluster_name": "eo-run",
            "namespace": "mapping",
            "image": "registry.example.org/fleximo:2.1",
            "image_pull_policy": "Always",
            "gpus_per_worker": 1,
            "memory_per_worker": "32Gi",
            "min_workers": 2,
            "max_workers": 10,
            "node_selector": {"gpu": "h100"},
        }
    )

    spec = kubernetes_cluster_spec(profile)
    worker = container(spec, "worker")

    assert spec["metadata"] == {"name": "eo-run", "namespace": "mapping"}
    assert spec["spec"]["worker"]["replicas"] == 2
    assert spec["spec"]["worker"]["spec"]["nodeSelector"] == {"gpu": "h100"}
    assert worker["image"] == "registry.example.org/fleximo:2.1"
    assert worker["imagePullPolicy"] == "Always"
    assert container(spec, "scheduler")["imagePullPolicy"] == "Always"


def test_cpu_workers_request_no_gpu():
    profile = parse_profile(
        {"kind": "kubernetes", "image": "example/fleximo:1", "gpus_per_worker": 0, "cores_per_worker": 4, "memory_per_worker": "16Gi"}
    )

    worker = container(kubernetes_cluster_spec(profile), "worker")

    assert GPU_DEVICE_RESOURCE not in worker["resources"]["limits"]
    assert "--resources" not in worker["args"]
    assert option(worker["args"], "--nthreads") == "4"
    assert environment(worker)["OMP_NUM_THREADS"] == "1"


def test_missing_dask_kubernetes_names_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "dask_kubernetes.operator", None)

    with pytest.raises(MissingBackendError, match=r"pip install 'fleximo-pipeline\[kubernetes\]'"):
        describe_profile(load_profile("kubernetes-gpu"))
