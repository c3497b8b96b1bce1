"""The inference stage on a CUDA device, against the same run on CPU.

These tests run only where torch finds a CUDA device (a CUDA build of torch
and a GPU). Elsewhere they are skipped: the CPU tests of the stage cover its
logic, and these check what differs on a GPU, the device the model runs on,
the bfloat16 autocast and how close CUDA's kernels come to the CPU's.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import xarray as xr
from distributed import Client, LocalCluster

from inference_support import TinyViTCard, scene_values, write_cube
from pipeline import layout, model_cache
from pipeline.inference import InferenceOptions, run_inference
from pipeline.model import bfloat16_available

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device that torch can use")

DEVICE = "cuda"
OPTIONS = InferenceOptions(overlap_px=8, block_px=64, chunk_px=32, batch_size=4, precision="float32")


def _read(url: str) -> dict[str, np.ndarray]:
    with xr.open_zarr(url, mask_and_scale=False, consolidated=False) as dataset:
        return {name: dataset[name].values for name in dataset.data_vars}


def _devices_loaded() -> list[str]:
    return [device for _, device in model_cache._LOADS]


@pytest.fixture(scope="module")
def cube(tmp_path_factory) -> str:
    values = scene_values(150, 97, seed=3)
    values[:, 110:, :40] = layout.REFLECTANCE_FILL
    return write_cube(tmp_path_factory.mktemp("cube") / "obs-1.zarr", values, chunk_px=32)


@pytest.fixture(scope="module")
def device_client():
    """One worker that advertises ``GPU=1`` and can use the device."""
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None,
                      resources={"GPU": 1}) as cluster, Client(cluster) as client:
        yield client


@pytest.fixture(scope="module")
def cpu_outputs(tmp_path_factory, cube) -> dict[str, np.ndarray]:
    """The same predictions by a worker with no CUDA device visible."""
    url = str(tmp_path_factory.mktemp("cpu") / "obs-1.zarr")
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None,
                      env={"CUDA_VISIBLE_DEVICES": ""}) as cluster, Client(cluster) as client:
        run_inference(client, cube, url, [TinyViTCard()], OPTIONS)
        assert set(client.run(_devices_loaded).popitem()[1]) == {"cpu"}
    return _read(url)


def test_model_tasks_run_on_the_device(device_client, cube, tmp_path):
    report = run_inference(device_client, cube, str(tmp_path / "obs-1.zarr"), [TinyViTCard()], OPTIONS)

    assert report.tiles_run > 0
    assert set(device_client.run(_devices_loaded).popitem()[1]) == {DEVICE}


def test_float32_on_device_agrees_with_cpu(device_client, cube, cpu_outputs, tmp_path):
    url = str(tmp_path / "obs-1.zarr")
    run_inference(device_client, cube, url, [TinyViTCard()], OPTIONS)

    result = _read(url)
    labels, expected = result[layout.LANDCOVER_VAR], cpu_outputs[layout.LANDCOVER_VAR]
    valid = expected != layout.PROBABILITY_FILL
    assert np.array_equal(labels == layout.PROBABILITY_FILL, ~valid)
    # Different kernels round differently, which can flip a class where two are nearly tied.
    assert np.mean(labels[valid] == expected[valid]) >= 0.99
    probabilities = result[layout.LANDCOVER_PROBABILITY_VAR].astype(int)
    expected_probabilities = cpu_outputs[layout.LANDCOVER_PROBABILITY_VAR].astype(int)
    assert np.abs(probabilities - expected_probabilities).max() <= 3


def test_bfloat16_on_device_close_to_float32(device_client, cube, cpu_outputs, tmp_path):
    url = str(tmp_path / "obs-1.zarr")
    options = InferenceOptions(overlap_px=8, block_px=64, chunk_px=32, batch_size=4, precision="bfloat16")
    run_inference(device_client, cube, url, [TinyViTCard()], options)

    labels, expected = _read(url)[layout.LANDCOVER_VAR], cpu_outputs[layout.LANDCOVER_VAR]
    valid = expected != layout.PROBABILITY_FILL
    assert np.array_equal(labels == layout.PROBABILITY_FILL, ~valid)
    # bfloat16 has 8 significant bits, so more near-ties flip than in float32.
    assert np.mean(labels[valid] == expected[valid]) >= 0.9


@pytest.mark.skipif(torch.cuda.is_available() and not bfloat16_available(DEVICE), reason="this GPU has no bfloat16")
def test_auto_precision_bfloat16_on_device(device_client, cube, tmp_path):
    reports = {}
    for precision in ("auto", "float32"):
        options = dataclasses.replace(OPTIONS, precision=precision)
        reports[precision] = run_inference(device_client, cube, str(tmp_path / f"{precision}.zarr"), [TinyViTCard()],
                                           options)

    assert reports["auto"].cards[0].precisions == ("bfloat16",)
    assert reports["float32"].cards[0].precisions == ("float32",)
