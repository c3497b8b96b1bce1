"""The address profile against a real `dask scheduler` and two `dask worker` processes.

One worker advertises ``GPU=1`` although it has no real GPU, and the other
advertises nothing. A tiny real inference job runs through the profile, and
every model task must land on the GPU-resourced worker.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers the .rio accessor)
import torch
import xarray as xr
from distributed import Client, get_task_stream

from cluster_tasks import read_variable, run_small_model

from cluster import GPUNotFoundError, MissingBackendError, describe_profile, gpu_workers, parse_profile, start_cluster
from pipeline import layout

PROJECT_ROOT = Path(__file__).parents[2]
TASKS_DIRECTORY = Path(__file__).parent
TINY_CARD = PROJECT_ROOT / "pipeline" / "model" / "cards" / "tiny_landcover_seeded.yaml"
WAVELENGTHS_UM = (0.49, 0.56, 0.665, 0.842)
GSD_M = 40.0
SCENE_PX = 128
BLOCK_PX = 64


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_process(arguments: list[str], log_path: Path) -> subprocess.Popen:
    """Start a Dask command in its own process group, so teardown reaches its children."""
    search_path = os.pathsep.join(filter(None, [str(TASKS_DIRECTORY), os.environ.get("PYTHONPATH")]))
    with log_path.open("w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "dask", *arguments],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=PROJECT_ROOT,
            start_new_session=True,
            env={**os.environ, "PYTHONPATH": search_path},
        )


def stop_process(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=15)


@pytest.fixture(scope="module")
def scheduler_address(tmp_path_factory):
    """Start `dask scheduler` and two `dask worker` processes on 127.0.0.1; stop them at teardown."""
    logs = tmp_path_factory.mktemp("dask-logs")
    address = f"tcp://127.0.0.1:{free_port()}"
    common = ["--no-dashboard"]
    processes = [
        start_process(["scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1], *common], logs / "scheduler.log")
    ]
    try:
        for name, extra in (("gpu-worker", ["--resources", "GPU=1"]), ("cpu-worker", [])):
            arguments = ["worker", address, "--host", "127.0.0.1", "--name", name, "--nthreads", "1", "--memory-limit", "3GiB", *common, *extra]
            processes.append(start_process(arguments, logs / f"{name}.log"))

        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=90)
        yield address
    finally:
        for process in reversed(processes):
            stop_process(process)


def worker_named(client: Client, name: str) -> str:
    workers = client.scheduler_info(n_workers=-1)["workers"]
    return next(address for address, info in workers.items() if info["name"] == name)


def write_cube(path: Path) -> str:
    """Write a 4-band 40 m input cube of smooth reflectance in the ingest stage's layout."""
    ys, xs = np.mgrid[0:SCENE_PX, 0:SCENE_PX].astype(np.float32)
    bands = [2000 + 1500 * np.sin(ys / (9.0 + band)) * np.cos(xs / (13.0 + band)) for band in range(len(WAVELENGTHS_UM))]
    values = np.clip(np.stack(bands), 0, 10000).astype(np.int16)

    reflectance = xr.DataArray(
        values,
        dims=("band", "y", "x"),
        coords={
            "band": np.arange(len(WAVELENGTHS_UM)),
            layout.WAVELENGTH_COORD: ("band", np.asarray(WAVELENGTHS_UM)),
            "y": 4174860.0 - GSD_M * (np.arange(SCENE_PX) + 0.5),
            "x": 441120.0 + GSD_M * (np.arange(SCENE_PX) + 0.5),
        },
        attrs={"gsd_m": GSD_M, "grid_mapping": "spatial_ref"},
    )
    dataset = xr.Dataset({layout.REFLECTANCE_VAR: reflectance}, attrs={"gsd_m": GSD_M})
    dataset = dataset.rio.write_crs("EPSG:32618").set_coords("spatial_ref")
    encoding = {
        layout.REFLECTANCE_VAR: {"chunks": (len(WAVELENGTHS_UM), BLOCK_PX, BLOCK_PX), "_FillValue": layout.REFLECTANCE_FILL}
    }
    dataset.to_zarr(path, mode="w", zarr_format=3, encoding=encoding, consolidated=False)
    return str(path)


def test_model_tasks_only_on_gpu_worker(scheduler_address, tmp_path):
    from pipeline.inference import InferenceOptions, run_inference

    cube_url = write_cube(tmp_path / "inputs" / "scene.zarr")
    prediction_url = str(tmp_path / "predictions" / "scene.zarr")
    options = InferenceOptions(block_px=BLOCK_PX, chunk_px=BLOCK_PX, batch_size=4)
    profile = parse_profile({"kind": "address", "address": scheduler_address}, name="test-scheduler")

    with start_cluster(profile) as client:
        gpu_address = worker_named(client, "gpu-worker")
        with get_task_stream(client=client) as stream:
            report = run_inference(client, cube_url, prediction_url, [TINY_CARD], options)
        records = stream.data

    model_workers = [record["worker"] for record in records if str(record["key"]).startswith("predict-")]
    expected_blocks = (SCENE_PX // BLOCK_PX) ** 2
    assert report.blocks_done == expected_blocks
    assert report.tiles_run > 0
    assert len(model_workers) == expected_blocks
    assert set(model_workers) == {gpu_address}

    landcover = xr.open_zarr(prediction_url, consolidated=False)[layout.LANDCOVER_VAR].values
    assert landcover.shape == (SCENE_PX, SCENE_PX)
    assert (landcover != layout.LANDCOVER_NODATA).all()


def test_gpu_resource_tasks_on_gpu_worker(scheduler_address):
    profile = parse_profile({"kind": "address", "address": scheduler_address}, name="test-scheduler")

    with start_cluster(profile) as client:
        gpu_address = worker_named(client, "gpu-worker")
        model_futures = [client.submit(run_small_model, seed, resources={"GPU": 1}, pure=False) for seed in range(6)]
        model_results = client.gather(model_futures)

    assert {address for address, _ in model_results} == {gpu_address}
    assert all(shape == [2, 3, 32, 32] for _, shape in model_results)


def test_gpu_workers_lists_resourced_worker(scheduler_address):
    profile = parse_profile({"kind": "address", "address": scheduler_address}, name="test-scheduler")

    with start_cluster(profile) as client:
        gpu_address = worker_named(client, "gpu-worker")
        addresses = gpu_workers(client)

    assert addresses == [gpu_address]


def test_address_sets_cloud_environment(scheduler_address):
    profile = parse_profile(
        {"kind": "address", "address": scheduler_address, "environment": {"AWS_REQUEST_PAYER": "requester"}},
        name="test-scheduler",
    )

    with start_cluster(profile) as client:
        readdir = client.run(read_variable, "GDAL_DISABLE_READDIR_ON_OPEN")
        payer = client.run(read_variable, "AWS_REQUEST_PAYER")

    assert len(readdir) == 2
    assert set(readdir.values()) == {"EMPTY_DIR"}
    assert set(payer.values()) == {"requester"}


def test_scheduler_left_running_after_exit(scheduler_address):
    profile = parse_profile({"kind": "address", "address": scheduler_address}, name="test-scheduler")

    with start_cluster(profile) as client:
        pass

    assert client.status == "closed"
    with Client(scheduler_address, timeout=10) as other:
        assert len(other.scheduler_info(n_workers=-1)["workers"]) == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="the workers here see a CUDA device")
def test_require_gpu_rejects_worker_without_cuda(scheduler_address):
    profile = parse_profile(
        {"kind": "address", "address": scheduler_address, "require_gpu": True}, name="needs-gpu"
    )

    with pytest.raises(GPUNotFoundError, match=r"'needs-gpu' requires GPU workers, but torch on 1 of 1 workers .* sees no CUDA device"):
        with start_cluster(profile):
            pass


def test_unreachable_scheduler_times_out():
    address = f"tcp://127.0.0.1:{free_port()}"
    profile = parse_profile({"kind": "address", "address": address, "start_timeout_s": 1}, name="nobody")

    started = time.monotonic()
    with pytest.raises(OSError, match="Timed out"):
        with start_cluster(profile):
            pass
    assert time.monotonic() - started < 30


def test_gateway_without_package_names_extra():
    try:
        import dask_gateway  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("dask-gateway is installed")
    profile = parse_profile(
        {"kind": "address", "gateway": {"address": "http://127.0.0.1:1", "workers": 2}}, name="gateway"
    )

    with pytest.raises(MissingBackendError, match=r"kind 'address' needs .*'dask_gateway'.*pip install 'fleximo-pipeline\[gateway\]'"):
        with start_cluster(profile):
            pass


def test_describe_scheduler_address():
    profile = parse_profile({"kind": "address", "address": "tcp://10.1.2.3:8786", "require_gpu": True}, name="site")

    text = describe_profile(profile)

    assert "connect to a running scheduler at tcp://10.1.2.3:8786" in text
    assert "requires a GPU worker: yes" in text


def test_describe_gateway():
    profile = parse_profile(
        {"kind": "address", "gateway": {"address": "https://gateway.example.org", "workers": 4}}, name="gw"
    )

    assert "Dask Gateway at https://gateway.example.org, a new cluster with 4 workers" in describe_profile(profile)
