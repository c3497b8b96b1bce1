"""Tests of the inference stage on real Dask clusters of worker processes.

The scene is 150 x 97 px (non-square, a multiple of neither tile nor stride)
with a nodata corner and a nodata strip wide enough to skip whole tiles. The
cards use 8 x 8 tokens of 4 px, so tiles are 32 px with 8 px overlap.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
from pathlib import Path

import distributed
import numpy as np
import pytest
import torch
import xarray as xr
import zarr
from distributed import Client, LocalCluster, Nanny, Scheduler, SpecCluster
from distributed.diagnostics.plugin import SchedulerPlugin

import pipeline.model
from pipeline.model import bfloat16_available, load_card
from inference_support import PointwiseCard, TinyViTCard, pointwise_logits, scene_values, write_cube
from pipeline import layout, model_cache
from pipeline.blocks import LOGIT_LIMIT, LOGIT_SCALE
from pipeline.completion import completion_info, is_complete
from pipeline.inference import InferenceOptions, run_inference
from pipeline.tiling import tile_grid

HEIGHT, WIDTH = 150, 97
OPTIONS = InferenceOptions(overlap_px=8, block_px=32, chunk_px=32, batch_size=4)
OUTPUTS = (layout.LANDCOVER_PROBABILITY_VAR, layout.LANDCOVER_VAR, layout.LANDCOVER_CONFIDENCE_VAR)


def _scene() -> np.ndarray:
    values = scene_values(HEIGHT, WIDTH, seed=3)
    values[1, :5, :7] = layout.REFLECTANCE_FILL  # one band missing: still nodata
    values[:, 110:, :40] = layout.REFLECTANCE_FILL  # whole tiles of nodata
    return values


def _read(url: str) -> dict[str, np.ndarray]:
    with xr.open_zarr(url, mask_and_scale=False, consolidated=False) as dataset:
        return {name: dataset[name].values for name in dataset.data_vars}


def _cluster(n_workers: int) -> LocalCluster:
    return LocalCluster(n_workers=n_workers, threads_per_worker=2, processes=True, dashboard_address=None)


@pytest.fixture(scope="module")
def client():
    with _cluster(2) as cluster, Client(cluster) as client:
        yield client


@pytest.fixture(scope="module")
def cube(tmp_path_factory) -> str:
    return write_cube(tmp_path_factory.mktemp("cube") / "obs-1.zarr", _scene(), chunk_px=32)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cube) -> dict[str, np.ndarray]:
    """The tiny ViT's predictions as one block on a cluster of one worker."""
    url = str(tmp_path_factory.mktemp("reference") / "obs-1.zarr")
    with _cluster(1) as cluster, Client(cluster) as single:
        options = InferenceOptions(overlap_px=8, block_px=256, chunk_px=32, batch_size=8)
        report = run_inference(single, cube, url, [TinyViTCard()], options)
    assert report.blocks_done == 1
    return _read(url)


def test_one_block_output_valid(reference):
    nodata = (_scene() == layout.REFLECTANCE_FILL).any(axis=0)
    for name in OUTPUTS:
        values = reference[name]
        assert np.all(values[..., nodata] == layout.PROBABILITY_FILL), name
        assert np.all(values[..., ~nodata] != layout.PROBABILITY_FILL), name
    probabilities = reference[layout.LANDCOVER_PROBABILITY_VAR][:, ~nodata].astype(int)
    assert np.all(np.abs(probabilities.sum(axis=0) - 250) <= 4)
    assert set(np.unique(reference[layout.LANDCOVER_VAR][~nodata])) <= {0, 1, 2, 3}
    assert np.all(reference[layout.LANDCOVER_CONFIDENCE_VAR][~nodata] <= 100)


@pytest.mark.parametrize("block_px", [32, 64, 96])
def test_blocks_and_workers_give_same_bytes(client, cube, reference, tmp_path, block_px):
    url = str(tmp_path / "obs-1.zarr")
    options = InferenceOptions(overlap_px=8, block_px=block_px, chunk_px=32, batch_size=3)
    report = run_inference(client, cube, url, [TinyViTCard()], options)

    grid = tile_grid(HEIGHT, WIDTH, 32, 8)
    assert report.tiles_run + report.tiles_skipped == len(grid)
    assert report.tiles_skipped > 0
    assert report.blocks_done == -(-HEIGHT // block_px) * -(-WIDTH // block_px)
    result = _read(url)
    for name in OUTPUTS:
        assert np.array_equal(result[name], reference[name]), name


def test_rerun_resumes_and_gives_same_bytes(client, cube, reference, tmp_path):
    url = str(tmp_path / "predictions" / "obs-1.zarr")
    calls = []

    def stop_halfway(done: int, total: int) -> None:
        calls.append(done)
        if done == total // 2:
            raise KeyboardInterrupt("stopped halfway")

    with pytest.raises(KeyboardInterrupt, match="halfway"):
        run_inference(client, cube, url, [TinyViTCard()], OPTIONS, manifest_url=str(tmp_path), progress=stop_halfway)
    assert not is_complete(url)

    reports = []
    report = run_inference(client, cube, url, [TinyViTCard()], OPTIONS, manifest_url=str(tmp_path),
                           progress=lambda done, total: reports.append((done, total)))
    assert is_complete(url)
    # The first report comes before any block of this run is written, and counts the earlier run's.
    assert reports[0] == (report.blocks_skipped, 20)
    assert reports[-1] == (20, 20)
    assert [done for done, _ in reports] == list(range(report.blocks_skipped, 21))
    # Blocks in flight when the first run stopped may still have been written. The
    # blocks left can then be all nodata, so that every tile run belongs to a neighbour.
    assert 0 < report.tiles_rerun <= report.tiles_run
    record = completion_info(url)
    assert record["stage"] == "infer"
    assert record["tiles_run"] == report.tiles_run
    total = report.blocks_done + report.blocks_skipped
    assert total == 5 * 4
    assert report.blocks_skipped >= total // 2
    assert report.blocks_done >= 1
    result = _read(url)
    for name in OUTPUTS:
        assert np.array_equal(result[name], reference[name]), name

    again = run_inference(client, cube, url, [TinyViTCard()], OPTIONS, manifest_url=str(tmp_path))
    assert again.blocks_skipped == total
    assert again.blocks_done == 0
    # No model task ran again, and the record keeps the precision the blocks were predicted in.
    assert again.cards[0].precisions == ()
    assert completion_info(url)["precisions"] == {again.cards[0].card: ["float32"]}
    assert (tmp_path / "manifest.json").exists()


def test_rerun_rewrites_deleted_store(client, cube, reference, tmp_path):
    url = str(tmp_path / "predictions" / "obs-1.zarr")
    run_inference(client, cube, url, [TinyViTCard()], OPTIONS, manifest_url=str(tmp_path))
    shutil.rmtree(url)

    report = run_inference(client, cube, url, [TinyViTCard()], OPTIONS, manifest_url=str(tmp_path))

    assert report.blocks_skipped == 0
    assert report.blocks_done == 20
    assert is_complete(url)
    result = _read(url)
    for name in OUTPUTS:
        assert np.array_equal(result[name], reference[name]), name


def test_rerun_rewrites_deleted_variable(client, cube, reference, tmp_path):
    url = str(tmp_path / "predictions" / "obs-1.zarr")
    run_inference(client, cube, url, [TinyViTCard()], OPTIONS, manifest_url=str(tmp_path))
    del zarr.open_group(url, mode="r+")[layout.LANDCOVER_CONFIDENCE_VAR]

    report = run_inference(client, cube, url, [TinyViTCard()], OPTIONS, manifest_url=str(tmp_path))

    assert report.blocks_done == 20
    result = _read(url)
    for name in OUTPUTS:
        assert np.array_equal(result[name], reference[name]), name


def test_rerun_removes_stale_partial_files(client, cube, tmp_path):
    url = tmp_path / "obs-1.zarr"
    run_inference(client, cube, str(url), [PointwiseCard()], OPTIONS)
    chunk = next(path for path in (url / layout.LANDCOVER_VAR / "c").rglob("*") if path.is_file())
    # What a writer killed between writing a chunk and renaming it leaves behind.
    stale = chunk.with_name(f".{chunk.name}.0123abcd.partial")
    stale.write_bytes(b"half a chunk")

    run_inference(client, cube, str(url), [PointwiseCard()], OPTIONS)

    assert not stale.exists()
    assert not list(url.rglob("*.partial"))
    assert is_complete(str(url))


def test_without_probabilities_same_classes_and_confidence(client, cube, reference, tmp_path):
    url = str(tmp_path / "obs-1.zarr")
    labels_only = dataclasses.replace(OPTIONS, class_probabilities=False)

    # A resumed store with probabilities from a full run loses them, because this run would leave them stale.
    run_inference(client, cube, url, [TinyViTCard()], OPTIONS)
    run_inference(client, cube, url, [TinyViTCard()], labels_only, manifest_url=str(tmp_path))

    result = _read(url)
    assert layout.LANDCOVER_PROBABILITY_VAR not in result
    for name in (layout.LANDCOVER_VAR, layout.LANDCOVER_CONFIDENCE_VAR):
        assert np.array_equal(result[name], reference[name]), name


def _expected_pointwise(card: PointwiseCard, values: np.ndarray) -> dict[str, np.ndarray]:
    """The pointwise card's outputs computed on the whole scene at once, without tiles."""
    nodata = (values == layout.REFLECTANCE_FILL).any(axis=0)
    reflectance = torch.from_numpy(values.astype(np.float32) * np.float32(layout.REFLECTANCE_SCALE))
    logits = pointwise_logits(reflectance[None], torch.tensor(card.weight), torch.tensor(card.bias))[0].numpy()
    shifted = np.clip(logits - logits.max(axis=0, keepdims=True), -LOGIT_LIMIT, 0)
    logits = np.round(shifted * np.float32(LOGIT_SCALE)) * np.float32(1 / LOGIT_SCALE)

    labels = np.where(nodata, 255, logits.argmax(axis=0)).astype(np.uint8)
    exponent = np.exp(logits - logits.max(axis=0, keepdims=True))
    inverse_sum = np.float32(1) / exponent.sum(axis=0)
    probabilities = exponent * inverse_sum
    scaled = np.rint(probabilities * np.float32(250)).astype(np.uint8)
    scaled[:, nodata] = 255
    confidence = np.where(nodata, 255, np.rint(inverse_sum * np.float32(100))).astype(np.uint8)
    return {
        layout.LANDCOVER_PROBABILITY_VAR: scaled,
        layout.LANDCOVER_VAR: labels,
        layout.LANDCOVER_CONFIDENCE_VAR: confidence,
    }


@pytest.mark.parametrize("overlap_px", [0, 8, 16])
def test_pointwise_model_has_no_seams(client, cube, tmp_path, overlap_px):
    card = PointwiseCard()
    url = str(tmp_path / "obs-1.zarr")
    options = InferenceOptions(overlap_px=overlap_px, block_px=32, chunk_px=32, batch_size=5)
    run_inference(client, cube, url, [card], options)

    result = _read(url)
    expected = _expected_pointwise(card, _scene())
    for name in OUTPUTS:
        mismatch = np.argwhere(result[name] != expected[name])
        assert mismatch.size == 0, f"{name} differs at {mismatch[:5].tolist()}"


def test_scene_smaller_than_one_tile(client, tmp_path):
    values = scene_values(5, 3, seed=1)
    cube = write_cube(tmp_path / "tiny.zarr", values, chunk_px=32)
    url = str(tmp_path / "pred.zarr")
    report = run_inference(client, cube, url, [PointwiseCard()], OPTIONS)
    assert report.tiles_run == 1
    result = _read(url)
    expected = _expected_pointwise(PointwiseCard(), values)
    for name in OUTPUTS:
        assert np.array_equal(result[name], expected[name]), name


def test_cloud_and_landcover_in_one_store(client, cube, tmp_path):
    cloud = PointwiseCard(name="cloud-test", task="cloud", classes=("clear", "cloud"),
                          weight=((1.0, 1.0, 1.0, 1.0), (-1.0, 2.0, 0.0, 1.0)), bias=(0.0, 0.0))
    url = str(tmp_path / "obs-1.zarr")
    report = run_inference(client, cube, url, [PointwiseCard(), cloud], OPTIONS)
    assert [card.task for card in report.cards] == ["landcover", "cloud"]

    result = _read(url)
    assert set(result) == {*OUTPUTS, layout.CLOUD_PROBABILITY_VAR}
    nodata = (_scene() == layout.REFLECTANCE_FILL).any(axis=0)
    cloud_values = result[layout.CLOUD_PROBABILITY_VAR]
    assert np.all(cloud_values[nodata] == 255)
    assert cloud_values[~nodata].max() <= 100

    with xr.open_zarr(url, decode_coords="all", consolidated=False) as dataset:
        attrs = dataset[layout.CLOUD_PROBABILITY_VAR].attrs
        assert attrs["card"] == "cloud-test"
        assert attrs["fingerprint"] == cloud.fingerprint()
        assert attrs["tile_px"] == 32
        assert attrs["patch_size_px"] == 4
        assert dataset.rio.crs.to_epsg() == 32618
        assert dataset.sizes["y"] == HEIGHT
        assert dataset.sizes["x"] == WIDTH


def test_patch_size_matched_to_scene_gsd(client, tmp_path):
    # A 4 m scene with a 10 m / p4 card: p = 10, tiles of 8 x 10 = 80 px.
    cube = write_cube(tmp_path / "gf2.zarr", scene_values(90, 170, seed=2), chunk_px=32, gsd_m=4.0)
    url = str(tmp_path / "pred.zarr")
    report = run_inference(client, cube, url, [PointwiseCard()], OPTIONS)
    card = report.cards[0]
    assert (card.patch_px, card.tile_px, card.overlap_px) == (10, 80, 8)
    assert card.block_px == 96  # one tile, rounded up to the 32 px chunks
    assert card.tiles_run == len(tile_grid(90, 170, 80, 8))

    override = run_inference(client, cube, str(tmp_path / "pred16.zarr"), [PointwiseCard()],
                             InferenceOptions(overlap_px=8, block_px=64, chunk_px=32, patch_size_override=6))
    assert override.cards[0].tile_px == 48


def test_checkpoint_loaded_once_per_worker(client, cube, tmp_path):
    card = TinyViTCard(seed=11)
    before = client.run(model_cache.load_count)
    report = run_inference(client, cube, str(tmp_path / "obs-1.zarr"), [card], OPTIONS)
    after = client.run(model_cache.load_count)

    loads = {address: after[address] - before.get(address, 0) for address in after}
    assert report.blocks_done == 20
    assert all(count <= 1 for count in loads.values()), loads
    assert sum(loads.values()) >= 1


def test_cpu_model_tasks_read_their_blocks(client, cube, tmp_path):
    with distributed.get_task_stream(client) as stream:
        report = run_inference(client, cube, str(tmp_path / "obs-1.zarr"), [TinyViTCard()], OPTIONS)

    kinds = [str(record["key"]).split("-")[0] for record in stream.data]
    assert report.blocks_done == 20
    assert kinds.count("predict") == 20
    assert kinds.count("write") == 20
    assert "read" not in kinds


class _BlocksInFlight(SchedulerPlugin):
    """Scheduler plugin that records the largest numbers of unfinished model tasks and unwritten blocks."""

    name = "blocks-in-flight"

    def __init__(self) -> None:
        self.unfinished: set[str] = set()
        self.unwritten: set[str] = set()
        self.max_unfinished = 0
        self.max_unwritten = 0

    def transition(self, key, start, finish, *args, **kwargs) -> None:
        kind, _, block = str(key).partition("-")
        done = finish in ("memory", "erred", "released", "forgotten")
        if kind == "predict":
            if done:
                self.unfinished.discard(block)
            else:
                self.unfinished.add(block)
                self.unwritten.add(block)
        elif kind == "write" and done:
            self.unwritten.discard(block)
        self.max_unfinished = max(self.max_unfinished, len(self.unfinished))
        self.max_unwritten = max(self.max_unwritten, len(self.unwritten))


def test_cpu_model_tasks_per_thread(client, cube, tmp_path):
    # Two workers of two threads: four model tasks, and two more blocks waiting for their writes.
    scheduler = client.cluster.scheduler
    tracker = _BlocksInFlight()
    scheduler.add_plugin(tracker)
    try:
        report = run_inference(client, cube, str(tmp_path / "obs-1.zarr"), [TinyViTCard()], OPTIONS)
    finally:
        scheduler.remove_plugin(name=tracker.name)

    assert report.blocks_done == 20
    assert 1 < tracker.max_unfinished <= 4
    assert tracker.max_unwritten <= 6
    assert not tracker.unfinished
    assert not tracker.unwritten


@pytest.fixture(scope="module")
def gpu_client():
    """A cluster where only one of two workers advertises ``GPU=1``."""
    workers = {
        "gpu": {"cls": Nanny, "options": {"nthreads": 2, "resources": {"GPU": 1}, "dashboard_address": None}},
        "cpu": {"cls": Nanny, "options": {"nthreads": 2, "dashboard_address": None}},
    }
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": None}}
    with SpecCluster(workers=workers, scheduler=scheduler) as cluster, Client(cluster) as client:
        client.wait_for_workers(2)
        yield client


def _gpu_worker(client: Client) -> str:
    info = client.scheduler_info(n_workers=-1)["workers"]
    return next(address for address, worker in info.items() if worker["resources"].get("GPU"))


def test_model_tasks_only_on_gpu_worker(gpu_client, cube, tmp_path):
    log = tmp_path / "calls.log"
    card = TinyViTCard(call_delay_s=0.05, call_log=str(log))
    gpu_worker = _gpu_worker(gpu_client)
    gpu_pid = gpu_client.run(os.getpid, workers=[gpu_worker])[gpu_worker]
    # Several blocks in flight, so that model tasks compete for the worker's two threads.
    options = dataclasses.replace(OPTIONS, blocks_in_flight=6)
    with distributed.get_task_stream(gpu_client) as stream:
        run_inference(gpu_client, cube, str(tmp_path / "obs-1.zarr"), [card], options)

    predicts = [record for record in stream.data if str(record["key"]).startswith("predict-")]
    assert len(predicts) == 20
    assert {record["worker"] for record in predicts} == {gpu_worker}
    # Reads are tasks of their own, so that they can run beside the model tasks.
    reads = [record for record in stream.data if str(record["key"]).startswith("read-")]
    assert len(reads) == 20
    calls = [line.split() for line in log.read_text().splitlines()]
    assert len(calls) >= 10  # blocks whose tiles are all nodata, or that own no tile, make no call
    assert {int(pid) for pid, _ in calls} == {gpu_pid}
    # Each model call saw exactly one model task executing on its worker: its own.
    assert {int(executing) for _, executing in calls} == {1}


def test_job_survives_killed_worker(gpu_client, cube, reference, tmp_path):
    # The worker that runs every model task is killed at the first finished
    # block after which it still has a task in progress.
    card = TinyViTCard(call_delay_s=0.1)
    gpu_worker = _gpu_worker(gpu_client)
    pid = gpu_client.run(os.getpid, workers=[gpu_worker])[gpu_worker]
    killed = []

    def kill_model_worker(done: int, total: int) -> None:
        if killed:
            return
        in_progress = len(gpu_client.processing(workers=[gpu_worker])[gpu_worker])
        if in_progress:
            killed.append((done, in_progress))
            os.kill(pid, signal.SIGKILL)

    report = run_inference(gpu_client, cube, str(tmp_path / "obs-1.zarr"), [card], OPTIONS, progress=kill_model_worker)

    assert killed, "the model worker had no task in progress after any finished block"
    assert killed[0][0] < 20, "the model worker was killed only after the last block"
    assert report.blocks_done == 20
    assert pid not in gpu_client.run(os.getpid).values()
    result = _read(str(tmp_path / "obs-1.zarr"))
    for name in OUTPUTS:
        assert np.array_equal(result[name], reference[name]), name


def test_real_card_same_bytes_across_splits(client, tmp_path):
    # The tiny FlexiMo card shipped with the package, 12 Sentinel-2 bands, patch 4 px: tiles of 64 px.
    card_path = Path(pipeline.model.__file__).parent / "cards" / "tiny_landcover_seeded.yaml"
    wavelengths = tuple(load_card(card_path).wavelengths_um)
    values = scene_values(100, 140, bands=len(wavelengths), seed=5)
    values[:, 70:, 100:] = layout.REFLECTANCE_FILL
    cube = write_cube(tmp_path / "s2.zarr", values, chunk_px=32, wavelengths_um=wavelengths)

    results = []
    for block_px in (256, 64):
        options = InferenceOptions(overlap_px=16, block_px=block_px, chunk_px=32, batch_size=3, patch_size_override=4)
        report = run_inference(client, cube, str(tmp_path / f"pred{block_px}.zarr"), [str(card_path)], options)
        assert (report.cards[0].patch_px, report.cards[0].tile_px) == (4, 64)
        assert report.cards[0].card == "tiny-landcover-seeded"
        results.append(_read(str(tmp_path / f"pred{block_px}.zarr")))

    assert results[0][layout.LANDCOVER_PROBABILITY_VAR].shape == (10, 100, 140)
    for name in OUTPUTS:
        assert np.array_equal(results[0][name], results[1][name]), name
    assert np.all(results[0][layout.LANDCOVER_VAR][70:, 100:] == 255)
    assert np.all(results[0][layout.LANDCOVER_VAR][:70, :100] < 10)


def test_out_of_memory_halves_batch(client, cube, reference, tmp_path):
    # Batches of 8 and 4 fail as if the GPU were full; batches of 2 fit.
    card = TinyViTCard(max_batch=2)
    options = dataclasses.replace(OPTIONS, block_px=256, batch_size=8)
    report = run_inference(client, cube, str(tmp_path / "obs-1.zarr"), [card], options)
    assert report.blocks_done == 1
    result = _read(str(tmp_path / "obs-1.zarr"))
    for name in OUTPUTS:
        assert np.array_equal(result[name], reference[name]), name


def test_auto_precision_float32_on_cpu(client, cube, reference, tmp_path):
    # The reference ran with the default, "auto". CPU workers resolve it to exact float32.
    assert OPTIONS.precision == "auto"
    options = dataclasses.replace(OPTIONS, block_px=64, precision="float32")
    report = run_inference(client, cube, str(tmp_path / "obs-1.zarr"), [TinyViTCard()], options)
    assert report.cards[0].precisions == ("float32",)
    result = _read(str(tmp_path / "obs-1.zarr"))
    for name in OUTPUTS:
        assert np.array_equal(result[name], reference[name]), name


@pytest.mark.skipif(not bfloat16_available("cpu"), reason="this CPU has no native bfloat16")
def test_bfloat16_on_cpu_with_support_runs(client, cube, tmp_path):
    options = dataclasses.replace(OPTIONS, precision="bfloat16")
    report = run_inference(client, cube, str(tmp_path / "obs-1.zarr"), [TinyViTCard()], options)
    assert report.cards[0].precisions == ("bfloat16",)
    assert is_complete(str(tmp_path / "obs-1.zarr"))


@pytest.mark.skipif(bfloat16_available("cpu"), reason="this CPU runs bfloat16 natively")
def test_bfloat16_without_cpu_support_rejected(client, cube, tmp_path):
    options = dataclasses.replace(OPTIONS, precision="bfloat16")
    url = tmp_path / "obs-1.zarr"
    with pytest.raises(ValueError, match=r"precision 'bfloat16' is not supported at native speed on the CPU of workers "
                                         r"tcp://.*; use 'auto' \(tiling.precision in a job file\)"):
        run_inference(client, cube, str(url), [TinyViTCard()], options)
    assert not url.exists()


def test_missing_cube_rejected(client, tmp_path):
    with pytest.raises(FileNotFoundError, match="no input cube at .*run the ingest stage"):
        run_inference(client, str(tmp_path / "absent.zarr"), str(tmp_path / "p.zarr"), [PointwiseCard()], OPTIONS)


def test_malformed_cubes_rejected(client, cube, tmp_path):
    version_2 = zarr.open_group(tmp_path / "v2.zarr", mode="w", zarr_format=2)
    version_2.create_array(layout.REFLECTANCE_VAR, shape=(2, 4, 4), dtype="int16")
    with pytest.raises(ValueError, match="Zarr format 2 store, and the pipeline reads Zarr v3; run the ingest stage"):
        run_inference(client, str(tmp_path / "v2.zarr"), str(tmp_path / "p.zarr"), [PointwiseCard()], OPTIONS)

    no_reflectance = zarr.open_group(tmp_path / "empty.zarr", mode="w", zarr_format=3)
    no_reflectance.create_array("x", shape=(4,), dtype="float64")
    with pytest.raises(ValueError, match="has no 'reflectance' variable; variables present: \\['x'\\]"):
        run_inference(client, str(tmp_path / "empty.zarr"), str(tmp_path / "p.zarr"), [PointwiseCard()], OPTIONS)

    no_wavelengths = zarr.open_group(tmp_path / "bands.zarr", mode="w", zarr_format=3)
    no_wavelengths.create_array(layout.REFLECTANCE_VAR, shape=(2, 4, 4), dtype="int16",
                                dimension_names=("band", "y", "x"))
    with pytest.raises(ValueError, match="has no 'wavelength_um' coordinate along 'band'"):
        run_inference(client, str(tmp_path / "bands.zarr"), str(tmp_path / "p.zarr"), [PointwiseCard()], OPTIONS)
    assert not (tmp_path / "p.zarr").exists()


def test_cube_that_is_array_or_corrupt_rejected(client, tmp_path):
    zarr.create_array(tmp_path / "array.zarr", shape=(2, 4, 4), dtype="int16")
    with pytest.raises(ValueError, match="is a Zarr array, not a group; run the ingest stage .* or pass the folder it writes"):
        run_inference(client, str(tmp_path / "array.zarr"), str(tmp_path / "p.zarr"), [PointwiseCard()], OPTIONS)

    (tmp_path / "corrupt.zarr").mkdir()
    (tmp_path / "corrupt.zarr" / "zarr.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt.zarr' has invalid Zarr metadata .*; run the ingest stage"):
        run_inference(client, str(tmp_path / "corrupt.zarr"), str(tmp_path / "p.zarr"), [PointwiseCard()], OPTIONS)


def test_bad_prediction_paths_rejected(client, cube, tmp_path):
    cases = {
        cube: "would overwrite the input cube",
        str(Path(cube) / "predictions.zarr"): "would overwrite the input cube",
        str(tmp_path / "file.zarr"): "is a file, not a Zarr store",
        str(tmp_path / "v2.zarr"): "is a Zarr format 2 store, and the pipeline reads Zarr v3; delete it or pass another output path",
        str(tmp_path / "array.zarr"): "is a Zarr array, not a group; delete it or pass another output path",
    }
    (tmp_path / "file.zarr").write_text("not a store")
    zarr.open_group(tmp_path / "v2.zarr", mode="w", zarr_format=2)
    zarr.create_array(tmp_path / "array.zarr", shape=(4, 4), dtype="uint8")
    before = sorted(path.name for path in Path(cube).iterdir())

    for url, message in cases.items():
        with pytest.raises(ValueError, match=message):
            run_inference(client, cube, url, [PointwiseCard()], OPTIONS)

    assert sorted(path.name for path in Path(cube).iterdir()) == before
    assert not is_complete(cube)


def test_rejected_rerun_keeps_store_complete(client, cube, tmp_path):
    url = str(tmp_path / "obs-1.zarr")
    run_inference(client, cube, url, [PointwiseCard()], OPTIONS)
    assert is_complete(url)

    other = write_cube(tmp_path / "other.zarr", scene_values(40, 30, seed=1), chunk_px=32)
    with pytest.raises(ValueError, match="has 'landcover_probability' of shape .* expected .* delete the store"):
        run_inference(client, other, url, [PointwiseCard()], OPTIONS)

    assert is_complete(url)


def test_unwritten_chunks_read_as_nodata(cube, tmp_path):
    # The store's fill value is the nodata value, so a block never written reads as nodata.
    from pipeline.prediction_store import create_prediction_store, open_cube

    url = str(tmp_path / "p.zarr")

    class Job:
        card = TinyViTCard()
        fingerprint = "0" * 64
        patch_px = 4
        probabilities = True
        plan = dataclasses.make_dataclass("Plan", ["grid", "block_px"])(tile_grid(HEIGHT, WIDTH, 32, 8), 32)

    create_prediction_store(open_cube(cube), url, [Job()], 32)
    result = _read(url)
    for name in OUTPUTS:
        assert np.all(result[name] == layout.PROBABILITY_FILL), name
    assert result[layout.LANDCOVER_VAR].shape == (HEIGHT, WIDTH)


@pytest.mark.parametrize(
    ("cards", "match"),
    [
        ([PointwiseCard(), TinyViTCard()], "2 cards have task 'landcover'; pass one card per product"),
        ([PointwiseCard(task="cloud", classes=("clear", "haze"))], "has no class named 'cloud'"),
        ([PointwiseCard(task="water")], "has task 'water'; expected 'landcover' or 'cloud'"),
    ],
)
def test_bad_cards_rejected(client, cube, tmp_path, cards, match):
    with pytest.raises(ValueError, match=match):
        run_inference(client, cube, str(tmp_path / "p.zarr"), cards, OPTIONS)


def test_overlap_wider_than_half_tile_rejected(client, cube, tmp_path):
    options = InferenceOptions(overlap_px=20, block_px=32, chunk_px=32)
    with pytest.raises(ValueError, match="tile overlap 20 px is outside"):
        run_inference(client, cube, str(tmp_path / "p.zarr"), [PointwiseCard()], options)


@pytest.mark.parametrize(
    ("keywords", "match"),
    [
        ({"overlap_px": -1}, "overlap_px must be >= 0"),
        ({"overlap_fraction": 0.7}, r"overlap_fraction must be in \[0, 0.5\]"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"precision": "float16"}, "precision 'float16' is not supported; use 'auto', 'float32' or 'bfloat16'"),
        ({"threads_per_worker": 0}, "threads_per_worker must be at least 1"),
    ],
)
def test_bad_options_rejected(keywords, match):
    with pytest.raises(ValueError, match=match):
        InferenceOptions(**keywords)
