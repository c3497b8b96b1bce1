"""Overhead of the inference stage over the model alone, on CPU, Zarr cube to Zarr prediction store.

For each model and scene size this script

1. writes the peer harness's synthetic 12-band scene (``make_scene.py`` in the
   peers folder) and converts it to an input cube in the pipeline's layout;
2. starts a ``LocalCluster`` of one worker process with 2 threads (start-up
   not timed). In that worker process it times the model alone over the
   scene's tiles: batch 8, forward passes only, tiles cut before the clock,
   one warm-up batch not counted. This also loads the model into the
   worker's cache, as the stage's first task would;
3. times :func:`pipeline.inference.run_inference` from the cube to a new
   prediction store (all reads, blending and writes included), alternating
   with the model-alone passes;
4. three times, returns the worker's freed heap to the kernel (glibc
   ``malloc_trim``) and runs the stage once more, measuring the worker's
   peak RSS (the kernel's record of it, reset before the run, and samples
   every 0.1 s): the highest peak is the timed cluster's memory figure;
5. after all sizes of a model, measures memory in fresh clusters
   (``--memory-clusters``, 5 by default). Each runs the stage once per size
   (this loads the model), then three times per size in turn, each run after
   ``malloc_trim`` and measured as in step 4. It reports each cluster's highest
   peak per size, the growth from the smallest to the largest size within
   each cluster, and the medians. A fresh worker's memory after start-up
   varies by up to about 100 MB from one cluster to the next, so sizes
   compared in one worker show the growth with less noise than sizes
   compared across clusters.

Overhead ratio = stage wall seconds / (pure seconds per tile x tiles the
stage ran), from the best stage run and the best model pass. The median of
the ratios of each stage run and the model pass before it is reported too:
a single fast model pass on a busy machine moves it less. The models are the harness's ``SegViT`` (``vitb``, ``tiny``),
wrapped to ignore wavelengths and patch size, with tile 256 and stride 192
(overlap 64). ``--check`` also runs the harness's pointwise ``bandthreshold``
model and compares its class map with the exact result, at 2048 and 1999 px.
``--without-probabilities`` stores only the class and its confidence, a
class map as the peer tools write, instead of each class's probability too.

    .venv/bin/python benchmarks/pipeline_overhead.py --models tiny --sizes 2048 4096
    .venv/bin/python benchmarks/pipeline_overhead.py --models vitb --sizes 2048 --check

Results are appended as JSON lines to ``--results``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from cluster.environment import MALLOC_ENVIRONMENT, spawn_settings  # noqa: E402

PEERS_DIR = PROJECT_ROOT.parent / "shared" / "peers"
BANDS_UM = (0.443, 0.49, 0.56, 0.665, 0.705, 0.74, 0.783, 0.842, 0.865, 0.945, 1.61, 2.19)
THREADS = 2


@dataclasses.dataclass(frozen=True)
class PeerModelCard:
    """A card for one of the peer harness's models: 16 x 16 tokens of 16 px at 10 m, 10 classes."""

    model_name: str
    name: str = "peer-segvit"
    task: str = "landcover"
    reference_gsd_m: float = 10.0
    reference_patch_size: int = 16
    token_grid: int = 16

    @property
    def class_names(self) -> list[str]:
        return [f"class {index}" for index in range(10)]

    def fingerprint(self) -> str:
        return hashlib.sha256(repr(self).encode()).hexdigest()

    def prepare_input(self, reflectance, wavelengths_um):
        # The harness's models take the stored integers (reflectance x 10000); rounding undoes the
        # float32 scaling exactly, which the pointwise check model's thresholds need. The stage
        # does not read the batch again, so this works in place.
        return reflectance.mul_(10000.0).round_()

    def stored_input_transform(self, wavelengths_um, stored_scale):
        # The same conversion for the stage to apply while it cuts tiles: the stored integers as they are.
        from pipeline.model.scaling import StoredInputTransform

        bands = len(wavelengths_um)
        return StoredInputTransform((stored_scale * 10000.0,) * bands, (0.0,) * bands, (1.0,) * bands)

    def load_model(self, device):
        import model as peer_models

        return IgnoreWavelengths(peer_models.build(self.model_name))


class IgnoreWavelengths(torch.nn.Module):
    """Calls a harness model with the tile alone, dropping the pipeline's wavelengths and patch size."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x, wavelengths_um=None, patch_size=None):
        return self.model(x)


def make_cube(size: int, work: Path, chunk_px: int) -> str:
    """Write the harness scene of ``size`` px and convert it to an input cube; return the cube path."""
    import rasterio
    import rioxarray  # noqa: F401  (registers the .rio accessor)
    import xarray as xr

    from pipeline import layout, stores

    tif = work / f"scene_{size}.tif"
    if not tif.exists():
        subprocess.run([sys.executable, str(PEERS_DIR / "make_scene.py"), "--size", str(size), "--out", str(tif)],
                       check=True, stdout=subprocess.DEVNULL)
    cube = work / f"scene_{size}.zarr"
    if cube.exists():
        return str(cube)
    with rasterio.open(tif) as src:
        values = src.read().astype(np.int16)
        transform, crs = src.transform, src.crs
    bands, height, width = values.shape
    x = transform.c + transform.a * (np.arange(width) + 0.5)
    y = transform.f + transform.e * (np.arange(height) + 0.5)
    reflectance = xr.DataArray(
        values, dims=("band", "y", "x"),
        coords={"band": np.arange(bands), layout.WAVELENGTH_COORD: ("band", np.asarray(BANDS_UM)), "y": y, "x": x},
        attrs={"gsd_m": abs(transform.a), "grid_mapping": "spatial_ref"},
    )
    dataset = xr.Dataset({layout.REFLECTANCE_VAR: reflectance}, attrs={"gsd_m": abs(transform.a)})
    dataset = dataset.rio.write_crs(crs).set_coords("spatial_ref")
    # Chunks and codec as the ingest stage writes them.
    encoding = {layout.REFLECTANCE_VAR: {"chunks": (bands, chunk_px, chunk_px), "_FillValue": layout.REFLECTANCE_FILL,
                                         "compressors": stores.stage_compressors()}}
    dataset.to_zarr(cube, mode="w", zarr_format=3, encoding=encoding, consolidated=False)
    return str(cube)


def pure_model_seconds(card, cube_url: str, tile_px: int, overlap_px: int, batch: int, threads: int,
                       repeat: int) -> dict:
    """Time the card's model alone over the scene's tiles in this worker process (runs as a Dask task)."""
    import zarr

    from pipeline import layout, model_cache
    from pipeline.tiling import tile_grid

    torch.set_num_threads(threads)
    array = zarr.open_group(cube_url, mode="r")[layout.REFLECTANCE_VAR]
    _, height, width = array.shape
    grid = tile_grid(height, width, tile_px, overlap_px)
    model = model_cache.model_for(card, card.fingerprint(), torch.device("cpu"))
    wavelengths = list(BANDS_UM)

    def load(tiles):
        out = np.zeros((len(tiles), array.shape[0], tile_px, tile_px), np.float32)
        for index, tile in enumerate(tiles):
            window = array[:, tile.y0: tile.y0 + tile_px, tile.x0: tile.x0 + tile_px]
            out[index, :, : window.shape[1], : window.shape[2]] = window * np.float32(1e-4)
        return card.prepare_input(torch.from_numpy(out), wavelengths)

    tiles = list(grid)
    batches = [tiles[start: start + batch] for start in range(0, len(tiles), batch)]
    passes, cpu_passes = [], []
    with torch.inference_mode():
        model(load(batches[0]), wavelengths_um=wavelengths, patch_size=16)  # warm-up, not counted
        for _ in range(repeat):
            seconds = cpu_seconds = 0.0
            for tiles_of_batch in batches:
                inputs = load(tiles_of_batch)
                started, cpu_started = time.perf_counter(), time.process_time()
                model(inputs, wavelengths_um=wavelengths, patch_size=16)
                seconds += time.perf_counter() - started
                cpu_seconds += time.process_time() - cpu_started
            passes.append(seconds)
            cpu_passes.append(cpu_seconds)
    seconds = min(passes)
    return {
        "seconds": seconds,
        "tiles": len(tiles),
        "s_per_tile": seconds / len(tiles),
        "passes": [round(value, 3) for value in passes],
        "cpu_s_per_tile": min(cpu_passes) / len(tiles),
        "matmul_precision": torch.get_float32_matmul_precision(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def _peak_rss(pid: int) -> int | None:
    """Return the kernel's record of the process's peak RSS in bytes (``VmHWM``), or ``None`` if unreadable."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak_rss(pid: int) -> bool:
    """Reset the kernel's record of the process's peak RSS to its current RSS; return whether that worked."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


class RssSampler:
    """Context manager for the peak of the summed RSS of some processes while its ``with`` block runs.

    On Linux the kernel records each process's peak RSS (``VmHWM``), which
    writing 5 to ``/proc/<pid>/clear_refs`` resets. That record catches
    peaks between samples. A thread also samples the RSS every
    ``interval_s``, and :attr:`peak` is the larger of the two. With several
    processes the sum of their recorded peaks is an upper bound.
    """

    def __init__(self, pids: list[int], interval_s: float = 0.1) -> None:
        import psutil

        self.pids = pids
        self.processes = [psutil.Process(pid) for pid in pids]
        self.interval_s = interval_s
        self.peak = 0
        self.sampled_peak = 0
        self.recorded_peak: int | None = None
        self._recorded = False
        self.start = sum(process.memory_info().rss for process in self.processes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sampled_peak = max(self.sampled_peak, sum(process.memory_info().rss for process in self.processes))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._recorded = all([_reset_peak_rss(pid) for pid in self.pids])
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        recorded = [_peak_rss(pid) for pid in self.pids]
        if self._recorded and None not in recorded:
            self.recorded_peak = sum(recorded)
        self.peak = max(self.sampled_peak, self.recorded_peak or 0)


def _release_free_heap() -> int:
    """Return this process's freed heap to the kernel with glibc's ``malloc_trim``."""
    import ctypes

    return ctypes.CDLL("libc.so.6").malloc_trim(0)


@contextlib.contextmanager
def _worker_cluster(dask_threads: int):
    """Start a cluster of one worker process with the project's malloc settings, and yield its client."""
    from distributed import Client, LocalCluster

    with spawn_settings(MALLOC_ENVIRONMENT), \
            LocalCluster(n_workers=1, threads_per_worker=dask_threads, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        client.wait_for_workers(1, timeout=120)
        yield client


def _memory_runs(client, worker_pids: list[int], cube: str, output: Path, card, options) -> list[RssSampler]:
    """Run the stage three times, each after the worker returned its freed heap, sampling the worker's RSS."""
    from pipeline.inference import run_inference

    runs = []
    for _ in range(3):
        client.run(_release_free_heap)
        subprocess.run(["rm", "-rf", str(output)], check=True)
        with RssSampler(worker_pids) as run:
            run_inference(client, cube, str(output), [card], options)
        runs.append(run)
    return runs


def _cpu_seconds(pids: list[int]) -> float:
    import psutil

    return sum(sum(psutil.Process(pid).cpu_times()[:2]) for pid in pids)


def _stage_setup(model_name: str, block_px: int, stage_threads: int | None, probabilities: bool,
                 blocks_in_flight: int | None):
    """Return the peer model's card and the stage's options for this benchmark."""
    import cloudpickle

    from pipeline.inference import InferenceOptions

    sys.path.insert(0, str(PEERS_DIR))
    import model as peer_models

    cloudpickle.register_pickle_by_value(peer_models)
    card = PeerModelCard(model_name, name=f"peer-{model_name}")
    options = InferenceOptions(overlap_px=64, block_px=block_px, chunk_px=512, batch_size=8,
                               threads_per_worker=stage_threads, class_probabilities=probabilities)
    if blocks_in_flight is not None:
        options = dataclasses.replace(options, blocks_in_flight=blocks_in_flight)
    return card, options


def memory_in_fresh_clusters(model_name: str, sizes: list[int], work: Path, clusters: int, dask_threads: int,
                             setup: dict) -> dict[int, list[float]]:
    """Return each size's peak worker RSS in MB in each of ``clusters`` fresh clusters (step 5 above)."""
    from pipeline.inference import run_inference

    card, options = _stage_setup(model_name, **setup)
    cubes = {size: make_cube(size, work, chunk_px=512) for size in sizes}
    outputs = {size: work / f"pred_{model_name}_{size}.zarr" for size in sizes}
    peaks: dict[int, list[float]] = {size: [] for size in sizes}
    for _ in range(clusters):
        with _worker_cluster(dask_threads) as client:
            worker_pids = list(client.run(os.getpid).values())
            for size in sizes:
                subprocess.run(["rm", "-rf", str(outputs[size])], check=True)
                run_inference(client, cubes[size], str(outputs[size]), [card], options)
            cluster_peaks: dict[int, int] = {size: 0 for size in sizes}
            for _ in range(3):
                for size in sizes:
                    client.run(_release_free_heap)
                    subprocess.run(["rm", "-rf", str(outputs[size])], check=True)
                    with RssSampler(worker_pids) as run:
                        run_inference(client, cubes[size], str(outputs[size]), [card], options)
                    cluster_peaks[size] = max(cluster_peaks[size], run.peak)
        for size in sizes:
            peaks[size].append(round(cluster_peaks[size] / 2**20, 1))
    return peaks


def run_one(model_name: str, size: int, work: Path, block_px: int, check: bool, repeat: int,
            dask_threads: int = THREADS, stage_threads: int | None = THREADS, probabilities: bool = True,
            blocks_in_flight: int | None = None) -> dict:
    from pipeline import layout
    from pipeline.inference import run_inference

    card, options = _stage_setup(model_name, block_px, stage_threads, probabilities, blocks_in_flight)
    cube = make_cube(size, work, chunk_px=512)
    output = work / f"pred_{model_name}_{size}.zarr"
    subprocess.run(["rm", "-rf", str(output)], check=True)

    with _worker_cluster(dask_threads) as client:
        worker_pids = list(client.run(os.getpid).values())
        load_before = os.getloadavg()[0]
        # Model-alone passes and stage runs alternate, so that a change in the
        # machine's load during the benchmark touches both about equally.
        pures, walls, cpu_seconds, peaks, ratios = [], [], [], [], []
        for _ in range(repeat):
            pure = client.submit(pure_model_seconds, card, cube, 256, 64, 8, THREADS, 1, pure=False).result()
            pures.append(pure)
            subprocess.run(["rm", "-rf", str(output)], check=True)
            cpu_started = _cpu_seconds(worker_pids)
            with RssSampler(worker_pids) as rss:
                started = time.perf_counter()
                report = run_inference(client, cube, str(output), [card], options)
                walls.append(time.perf_counter() - started)
            cpu_seconds.append(_cpu_seconds(worker_pids) - cpu_started)
            peaks.append(rss.peak)
            ratios.append(walls[-1] / (pure["s_per_tile"] * report.tiles_run))
        pure = min(pures, key=lambda item: item["seconds"])
        wall = min(walls)
        maxrss_kib = client.run(lambda: __import__("resource").getrusage(0).ru_maxrss)

        # Three more stage runs for memory alone. Before each, the worker
        # returns its freed heap to the kernel, so that what the model-alone
        # passes left behind (more at 4096 px, whose pass reads more tiles)
        # is not counted. The highest peak is kept.
        memory_runs = _memory_runs(client, worker_pids, cube, output, card, options)
        memory_run = max(memory_runs, key=lambda run: run.peak)

    result = {
        "tool": "fleximo-pipeline run_inference",
        "model": model_name,
        "scene_px": size,
        "tile": 256,
        "stride": 192,
        "batch": 8,
        "block_px": report.cards[0].block_px,
        "blocks_in_flight": options.blocks_in_flight,
        "outputs": "class probabilities, class, confidence" if probabilities else "class, confidence",
        "workers": 1,
        "threads": THREADS,
        "dask_threads": dask_threads,
        "stage_torch_threads": stage_threads,
        "tiles": report.tiles_run,
        "wall_s": round(wall, 3),
        "wall_s_runs": [round(value, 3) for value in walls],
        "pure_passes_s": [round(item["seconds"], 3) for item in pures],
        "overhead_ratio_per_run": [round(value, 3) for value in ratios],
        "pure_s_same_tiles": round(pure["s_per_tile"] * report.tiles_run, 3),
        "pure_s_per_tile": pure["s_per_tile"],
        "overhead_ratio": round(wall / (pure["s_per_tile"] * report.tiles_run), 3),
        # Each pair's stage run and model pass ran one after the other, so a
        # change in the machine's load touches both. The first pair also
        # loads the blending loops and warms the heap, so it is left out.
        "overhead_ratio_median_of_pairs": round(float(np.median(ratios[1:] if len(ratios) > 2 else ratios)), 3),
        "model_s_inside_stage": round(report.model_seconds, 3),
        "worker_cpu_s": round(min(cpu_seconds), 3),
        "pure_cpu_s_same_tiles": round(pure["cpu_s_per_tile"] * report.tiles_run, 3),
        "cpu_overhead_ratio": round(min(cpu_seconds) / (pure["cpu_s_per_tile"] * report.tiles_run), 3),
        "tiles_per_s": round(report.tiles_run / wall, 2),
        "worker_peak_rss_mb": round(memory_run.peak / 2**20, 1),
        "worker_peak_rss_mb_memory_runs": [round(run.peak / 2**20, 1) for run in memory_runs],
        "worker_rss_at_start_mb": round(memory_run.start / 2**20, 1),
        "worker_peak_rss_mb_timed_runs": round(max(peaks) / 2**20, 1),
        "worker_maxrss_mb": round(max(maxrss_kib.values()) / 1024, 1),
        "matmul_precision": pure["matmul_precision"],
        "torch": pure["torch"],
        "python": platform.python_version(),
        "load_average_1min_at_start": round(load_before, 2),
    }
    if check:
        result["check"] = stitching_check(work, block_px)
    return result


def stitching_check(work: Path, block_px: int) -> dict:
    """Run the pointwise ``bandthreshold`` model and compare its class map with the exact result."""
    import xarray as xr
    from distributed import Client, LocalCluster

    import model as peer_models
    from pipeline import layout
    from pipeline.inference import InferenceOptions, run_inference

    checks = {}
    options = InferenceOptions(overlap_px=64, block_px=block_px, chunk_px=512, batch_size=8, threads_per_worker=THREADS)
    with spawn_settings(MALLOC_ENVIRONMENT), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        for size in (2048, 1999):
            cube = make_cube(size, work, chunk_px=512)
            output = work / f"pred_bandthreshold_{size}.zarr"
            subprocess.run(["rm", "-rf", str(output)], check=True)
            run_inference(client, cube, str(output), [PeerModelCard("bandthreshold", name="bandthreshold")], options)
            with xr.open_zarr(output, mask_and_scale=False, consolidated=False) as predicted, \
                    xr.open_zarr(cube, mask_and_scale=False, consolidated=False) as scene:
                got = predicted[layout.LANDCOVER_VAR].values
                want = peer_models.reference_threshold(scene[layout.REFLECTANCE_VAR][0].values)
            wrong = got != want
            checks[str(size)] = {"ok": not wrong.any(), "wrong_px": int(wrong.sum())}
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny"], choices=["tiny", "vitb"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[2048, 4096])
    parser.add_argument("--block-px", type=int, default=1024, help="block side in pixels (default: the stage's)")
    parser.add_argument("--work", default="/tmp/fleximo-overhead", help="folder for scenes, cubes and outputs")
    parser.add_argument("--results", default=None, help="JSON lines file to append to (default: <work>/results.jsonl)")
    parser.add_argument("--check", action="store_true", help="also run the pointwise stitching check")
    parser.add_argument("--dask-threads", type=int, default=THREADS,
                        help="Dask threads of the worker (torch always uses 2)")
    parser.add_argument("--stage-threads", type=int, default=None,
                        help="torch threads of the stage's model tasks (default: the worker's share of cores "
                             "per Dask thread, as the stage chooses)")
    parser.add_argument("--without-probabilities", action="store_true",
                        help="store the class and its confidence only, not each class's probability")
    parser.add_argument("--blocks-in-flight", type=int, default=None,
                        help="blocks submitted ahead per model slot (default: the stage's)")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs of the model alone and of the stage; the best is kept")
    parser.add_argument("--memory-clusters", type=int, default=5,
                        help="fresh clusters in which the peak memory of every size is measured (default: 5)")
    args = parser.parse_args()
    if args.memory_clusters < 1:
        parser.error(f"--memory-clusters must be at least 1, got {args.memory_clusters}")

    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = Path(args.results) if args.results else work / "results.jsonl"
    setup = {"block_px": args.block_px, "stage_threads": args.stage_threads,
             "probabilities": not args.without_probabilities, "blocks_in_flight": args.blocks_in_flight}
    for index, model_name in enumerate(args.models):
        model_results = []
        for size in args.sizes:
            check = args.check and index == 0 and size == args.sizes[0]
            model_results.append(run_one(model_name, size, work, check=check, repeat=args.repeat,
                                         dask_threads=args.dask_threads, **setup))
        peaks = memory_in_fresh_clusters(model_name, args.sizes, work, args.memory_clusters, args.dask_threads, setup)
        smallest, largest = min(args.sizes), max(args.sizes)
        growth = [100 * (large / small - 1) for small, large in zip(peaks[smallest], peaks[largest])]
        for result in model_results:
            result["worker_peak_rss_mb_by_cluster"] = peaks[result["scene_px"]]
            result["worker_peak_rss_mb_median_of_clusters"] = round(float(np.median(peaks[result["scene_px"]])), 1)
            if result["scene_px"] == largest and largest != smallest:
                result["peak_growth_pct_by_cluster"] = {"from_px": smallest, "pct": [round(value, 1) for value in growth]}
                result["peak_growth_pct_median"] = round(float(np.median(growth)), 1)
            with open(results, "a") as handle:
                handle.write(json.dumps(result) + "\n")
            print(json.dumps(result))


if __name__ == "__main__":
    main()
