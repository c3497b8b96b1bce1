"""Inference stage: input cube -> per-scene land-cover and cloud predictions on a Dask cluster.

For each model card the scene is tiled with a patch size matched to its GSD
(:mod:`pipeline.tiling`) and split into blocks. Per block, three kinds of
task run (:mod:`pipeline.blocks`):

1. ``read``: the block plus the reach of its tiles, from the Zarr cube. On
   GPU workers it is a task of its own without the GPU resource, so the
   next block's I/O overlaps this block's model time. On CPU workers the
   ``predict`` task reads the block itself. Each task thread reads and runs
   the model, so the threads overlap one another's I/O, and one task fewer
   per block saves Dask's per-task work.
2. ``predict``: the block's own tiles through the model, blended into
   integer sums; it asks for ``GPU=1`` when the workers advertise GPUs;
3. ``write``: the block's own sums plus what the tiles of its upper and left
   neighbours contribute (``overlap`` tasks copy those edges out of the
   neighbours' sums), turned into uint8 outputs and written into the
   prediction store as a chunk-aligned region, then marked done.

Each tile is run once. Blocks are submitted as explicit futures, rows in
pairs (:meth:`~pipeline.tiling.BlockPlan.in_row_pairs`), a few at a time, so
memory stays nearly flat whatever the scene size. On CPU workers a model task
is submitted only while fewer than one per task thread are unfinished, so a
thread that finishes a block writes it before it starts the next, and only
``blocks_in_flight - 1`` more blocks per worker may wait for their writes.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import distributed

from pipeline import layout
from pipeline.bands import select_bands
from pipeline.blocks import (
    BlockResult,
    CardJob,
    cloud_class_index,
    CubeInfo,
    overlap_into,
    predict_block,
    prediction_stats,
    read_and_predict_block,
    read_block,
    write_block,
)
from pipeline.chunk_io import remove_partial_files
from pipeline.completion import IncompleteStoreError, clear_complete, completion_info, mark_complete
from pipeline.manifest import Manifest
from pipeline.prediction_store import check_prediction_store, create_prediction_store, open_cube
from pipeline.stores import is_remote, local_path
from pipeline.tiling import Block, choose_patch_size, plan_blocks, tile_grid

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class InferenceOptions:
    """Settings of the inference stage.

    Attributes
    ----------
    overlap_px
        Overlap of neighbouring tiles in pixels; ``None`` uses ``overlap_fraction``.
    overlap_fraction
        Overlap as a fraction of the tile side (0 to 0.5), used when ``overlap_px`` is ``None``.
    block_px
        Side of one block task in pixels; raised to at least one tile and to a
        multiple of ``chunk_px``.
    chunk_px
        Chunk side of the prediction store in pixels.
    batch_size
        Tiles per model call (halved on CUDA out-of-memory).
    precision
        ``"auto"``: bfloat16 autocast on CUDA workers whose GPU supports it,
        exact float32 on CPU workers. ``"float32"`` or ``"bfloat16"`` runs
        every model task at that precision.
    patch_size_override
        Patch size in pixels instead of the resolution-matched one.
    threads_per_worker
        Torch threads per model task on CPU workers; ``None`` gives each task
        thread of a worker an equal share of the worker process's cores.
    blocks_in_flight
        Bounds memory. On GPU workers, the blocks submitted ahead per GPU. On
        CPU workers each task thread predicts one block at a time, and up to
        ``blocks_in_flight - 1`` more blocks per worker wait for their write.
    min_patch, max_patch
        Range the resolution-matched patch size is clamped to, in pixels.
    class_probabilities
        Store each land-cover class's probability as well as the class and
        its confidence. Without them the prediction store is smaller and the
        stage faster, and a mosaic can only take the least cloudy observation.
    """

    overlap_px: int | None = None
    overlap_fraction: float = 0.25
    block_px: int = 1024
    chunk_px: int = 512
    batch_size: int = 8
    precision: Literal["auto", "float32", "bfloat16"] = "auto"
    patch_size_override: int | None = None
    threads_per_worker: int | None = None
    blocks_in_flight: int = 2
    min_patch: int = 4
    max_patch: int = 64
    class_probabilities: bool = True

    def __post_init__(self) -> None:
        if self.overlap_px is not None and self.overlap_px < 0:
            raise ValueError(f"overlap_px must be >= 0, got {self.overlap_px}")
        if not 0.0 <= self.overlap_fraction <= 0.5:
            raise ValueError(f"overlap_fraction must be in [0, 0.5], got {self.overlap_fraction}")
        for name in ("block_px", "chunk_px", "batch_size", "blocks_in_flight"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.precision not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"precision {self.precision!r} is not supported; use 'auto', 'float32' or 'bfloat16'")
        if self.threads_per_worker is not None and self.threads_per_worker < 1:
            raise ValueError(f"threads_per_worker must be at least 1 or None, got {self.threads_per_worker}")

    def overlap_for(self, tile_px: int) -> int:
        """Return the overlap in pixels for tiles of ``tile_px``."""
        if self.overlap_px is not None:
            return self.overlap_px
        return int(round(self.overlap_fraction * tile_px))


@dataclasses.dataclass(frozen=True)
class CardReport:
    """Summary of the stage's work with one model card."""

    card: str
    task: str
    patch_px: int
    tile_px: int
    overlap_px: int
    block_px: int
    blocks_written: int
    blocks_skipped: int
    tiles_run: int
    tiles_skipped: int
    model_seconds: float
    tiles_rerun: int = 0
    precisions: tuple[str, ...] = ()  # Precisions its model tasks ran in, such as "float32". Empty if none ran.


@dataclasses.dataclass(frozen=True)
class InferenceReport:
    """Summary of one :func:`run_inference` call.

    ``tiles_skipped`` counts tiles that were entirely nodata (no model call);
    ``blocks_skipped`` counts blocks already done in an earlier run.
    ``tiles_rerun`` counts the tiles of ``tiles_run`` that belong to such
    blocks: they run again when their edges blend into a block not yet written.
    """

    cards: tuple[CardReport, ...]
    seconds: float

    @property
    def blocks_done(self) -> int:
        return sum(card.blocks_written for card in self.cards)

    @property
    def blocks_skipped(self) -> int:
        return sum(card.blocks_skipped for card in self.cards)

    @property
    def tiles_run(self) -> int:
        return sum(card.tiles_run for card in self.cards)

    @property
    def tiles_skipped(self) -> int:
        return sum(card.tiles_skipped for card in self.cards)

    @property
    def tiles_rerun(self) -> int:
        return sum(card.tiles_rerun for card in self.cards)

    @property
    def model_seconds(self) -> float:
        return sum(card.model_seconds for card in self.cards)


def _load_cards(cards: Sequence[Any]) -> list[Any]:
    loaded = []
    for card in cards:
        if isinstance(card, (str, os.PathLike)):
            from pipeline.model import load_card

            card = load_card(Path(card))
        loaded.append(card)
    tasks = [card.task for card in loaded]
    for task in set(tasks):
        if tasks.count(task) > 1:
            raise ValueError(f"{tasks.count(task)} cards have task {task!r}; pass one card per product")
    for card in loaded:
        if card.task not in ("landcover", "cloud"):
            raise ValueError(f"card {card.name!r} has task {card.task!r}; expected 'landcover' or 'cloud'")
        if card.task == "cloud" and len(card.class_names) > 1:
            cloud_class_index(card)
    return loaded


def _card_bands(card: Any, cube_wavelengths_um: Sequence[float]) -> tuple[int, ...] | None:
    """Return the cube bands nearest to the card's training bands, or ``None`` to feed all bands."""
    card_wavelengths = getattr(card, "wavelengths_um", None)
    if not card_wavelengths:
        return None
    indices = select_bands(card_wavelengths, cube_wavelengths_um)
    return None if len(indices) == len(cube_wavelengths_um) else indices


def _token_grid(card: Any) -> int:
    grid = card.token_grid
    if isinstance(grid, int):
        return grid
    rows, cols = grid
    if rows != cols:
        raise ValueError(f"card {card.name!r} has a non-square token grid {grid}; only square tiles are supported")
    return int(rows)


def _cluster_layout(client: distributed.Client, options: InferenceOptions) -> tuple[bool, int, int | None, int]:
    """Return (workers advertise GPUs, model slots, torch threads per model task on CPU, number of workers).

    On GPU workers a slot is one GPU. On CPU workers every task thread is a
    slot: block tasks run the model side by side, and each gets an equal share
    of its worker process's cores, so that the model never competes for a
    core with the reads and writes of the other task threads.
    """
    workers = client.scheduler_info(n_workers=-1)["workers"]
    if not workers:
        raise RuntimeError("the Dask cluster has no workers; start workers before running inference")
    gpus = sum(int(info.get("resources", {}).get("GPU", 0)) for info in workers.values())
    task_threads = sum(int(info.get("nthreads", 1)) for info in workers.values())
    if options.threads_per_worker is not None:
        threads = options.threads_per_worker
    else:
        cores_by_host = client.run(lambda: len(os.sched_getaffinity(0)))
        hosts: dict[str, int] = {}
        for address in workers:
            host = distributed.comm.get_address_host(address)
            hosts[host] = hosts.get(host, 0) + 1
        shares = [
            max(1, cores // hosts[distributed.comm.get_address_host(address)] // int(workers[address].get("nthreads", 1)))
            for address, cores in cores_by_host.items()
        ]
        threads = min(shares)
    return gpus > 0, (gpus if gpus else task_threads), threads, len(workers)


def _check_bfloat16_on_workers(client: distributed.Client, use_gpu: bool) -> None:
    """Raise unless every worker that runs model tasks has native bfloat16 on its model device."""
    from pipeline.model import bfloat16_available

    workers = client.scheduler_info(n_workers=-1)["workers"]
    model_workers = [
        address for address, info in workers.items() if not use_gpu or info.get("resources", {}).get("GPU", 0)
    ]
    device = "cuda" if use_gpu else "cpu"
    # NOTE: the CUDA branch has not run on a GPU yet. The tests cover the CPU branch only.
    supported = client.run(bfloat16_available, device, workers=model_workers)
    lacking = sorted(address for address, native in supported.items() if not native)
    if lacking:
        raise ValueError(
            f"precision 'bfloat16' is not supported at native speed on the {device.upper()} of workers "
            f"{', '.join(lacking)} (needs a CUDA GPU with bfloat16 or a CPU with AVX-512 BF16 / AMX); use 'auto' "
            "(tiling.precision in a job file) for bfloat16 only on GPUs that have it, or 'float32'"
        )


def _manifest_url(manifest_url: str | None) -> str | None:
    if manifest_url is None or manifest_url.endswith(".json"):
        return manifest_url
    return manifest_url.rstrip("/") + "/" + layout.MANIFEST_NAME


def run_inference(
    client: distributed.Client,
    cube_url: str,
    prediction_url: str,
    cards: Sequence[Any],
    options: InferenceOptions,
    *,
    manifest_url: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> InferenceReport:
    """Predict every card's products for one input cube and write them into one prediction store.

    Parameters
    ----------
    client
        Client of the cluster to run on. Workers that advertise the resource
        ``GPU`` run the model tasks there, with one model task per GPU.
    cube_url
        Input cube (``<root>/inputs/<obs>.zarr``) with ``reflectance`` (band, y, x) int16.
    prediction_url
        Prediction store to create or complete (``<root>/predictions/<obs>.zarr``).
    cards
        Model cards (:class:`pipeline.model.ModelCard` or a card YAML path), at most one per task.
        Another object works too if it has what the stage reads of a card:
        ``name``, ``task`` (``"landcover"`` or ``"cloud"``), ``class_names``,
        ``reference_gsd_m``, ``reference_patch_size``, ``token_grid``,
        ``fingerprint()``, ``load_model(device)`` and
        ``prepare_input(reflectance, wavelengths_um)``. Optional:
        ``wavelengths_um`` (the bands to feed, matched to the cube's) and
        ``stored_input_transform(wavelengths_um, stored_scale)``, which lets the
        stage convert the input while it cuts tiles (see
        :class:`pipeline.model.scaling.StoredInputTransform`). It must pickle,
        because the block tasks take it to the workers.
    options
        Tiling, batching and precision settings.
    manifest_url
        Output root or ``manifest.json`` URL. When given, finished blocks are
        recorded there and blocks done in an earlier run are skipped.
    progress
        Called with ``(blocks finished, blocks total)``: once at the start,
        with the blocks an earlier run finished, then as each block is written.

    Returns
    -------
    InferenceReport
        Blocks written and skipped, tiles run and skipped as nodata, patch and
        tile size per card, wall and model seconds.
    """
    started = time.perf_counter()
    loaded = _load_cards(cards)
    cube = open_cube(cube_url)
    manifest_url = _manifest_url(manifest_url)
    manifest = Manifest.load(manifest_url, dict(cube.storage_options)) if manifest_url else None
    observation = Path(prediction_url.rstrip("/")).name.removesuffix(".zarr")
    use_gpu, slots, threads, workers = _cluster_layout(client, options)
    if use_gpu:
        max_in_flight, max_predicting = slots * options.blocks_in_flight, None
    else:
        max_in_flight, max_predicting = slots + workers * (options.blocks_in_flight - 1), slots
    if options.precision == "bfloat16":
        _check_bfloat16_on_workers(client, use_gpu)

    jobs = []
    for card in loaded:
        patch_px = choose_patch_size(
            card.reference_gsd_m, card.reference_patch_size, cube.effective_gsd_m,
            override=options.patch_size_override, min_patch=options.min_patch, max_patch=options.max_patch,
        )
        tile_px = _token_grid(card) * patch_px
        grid = tile_grid(cube.info.height, cube.info.width, tile_px, options.overlap_for(tile_px))
        plan = plan_blocks(grid, options.block_px, options.chunk_px)
        fingerprint = card.fingerprint()
        probabilities = options.class_probabilities or card.task != "landcover"
        key = f"{card.task}-{fingerprint[:12]}-p{patch_px}-o{grid.overlap_px}-b{plan.block_px}"
        if not probabilities:
            key += "-labels"
        jobs.append(CardJob(
            card=card, fingerprint=fingerprint, key=key, plan=plan, patch_px=patch_px, batch_size=options.batch_size,
            precision=options.precision, threads=threads, prediction_url=prediction_url,
            storage_options=cube.storage_options, manifest_url=manifest_url, observation=observation,
            band_indices=_card_bands(card, cube.info.wavelengths_um), probabilities=probabilities,
            run=uuid.uuid4().hex[:8],
        ))
        logger.info(
            "%s: card %s, patch %d px, tiles %d px with %d px overlap (%d tiles), %d blocks of %d px",
            observation, card.name, patch_px, tile_px, grid.overlap_px, len(grid), len(plan), plan.block_px,
        )

    storage_options = dict(cube.storage_options)
    # Checked before the completion record goes, so a rejected run leaves the store as it was.
    missing = check_prediction_store(cube, prediction_url, jobs, options.chunk_px)
    try:
        earlier_precisions = completion_info(prediction_url, storage_options).get("precisions", {})
    except IncompleteStoreError:
        earlier_precisions = {}
    # A store left by an interrupted rerun must not read as complete.
    clear_complete(prediction_url, storage_options)
    done = manifest.done_blocks("infer", observation) if manifest else set()
    for job in jobs:
        recorded = {f"{job.key}-{block.block_id}" for block in job.plan} & done
        if missing[job.key] and recorded:
            # The blocks were written into a store or variable that has since been deleted.
            done -= recorded
            logger.warning(
                "%s: the run manifest records %d blocks of card %s as done, but the prediction store %s lacks %s; "
                "writing them again", observation, len(recorded), job.card.name, prediction_url,
                ", ".join(missing[job.key]),
            )
    # The first report comes now, with the blocks an earlier run finished, so
    # that a progress bar shows while the first blocks of this run are predicted.
    counter = _Progress(
        sum(len(job.plan) for job in jobs), progress,
        done=sum(f"{job.key}-{block.block_id}" in done for job in jobs for block in job.plan),
    )
    # The first blocks are read and predicted while this thread creates the
    # store; their writes wait for it.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="prediction-store") as pool:
        store_ready = pool.submit(create_prediction_store, cube, prediction_url, jobs, options.chunk_px)
        reports = [
            _run_card(client, cube.info, job, done, use_gpu, max_in_flight, counter, store_ready, max_predicting)
            for job in jobs
        ]
        store_ready.result()
    if manifest is not None:
        Manifest.load(manifest_url, dict(cube.storage_options)).save()
    if not is_remote(prediction_url):
        # Every write is done, so what is left are files of writers that were killed.
        removed = remove_partial_files(local_path(prediction_url))
        if removed:
            logger.info("%s: removed %d temporary chunk files of killed writers", observation, removed)

    report = InferenceReport(tuple(reports), time.perf_counter() - started)
    mark_complete(prediction_url, {
        "stage": "infer",
        "cards": {job.card.name: job.fingerprint for job in jobs},
        # Precisions of this run's model tasks and of the earlier run that completed the store.
        "precisions": {
            card.card: sorted(set(card.precisions) | set(earlier_precisions.get(card.card, [])))
            for card in report.cards
        },
        "blocks": sum(len(job.plan) for job in jobs),
        "tiles_run": report.tiles_run,
    }, storage_options)
    logger.info(
        "%s: %d blocks written, %d skipped as done, %d tiles run, %d skipped as nodata, %.1f s",
        observation, report.blocks_done, report.blocks_skipped, report.tiles_run, report.tiles_skipped,
        report.seconds,
    )
    for card in report.cards:
        if card.precisions:
            logger.info("%s: card %s ran its model in %s", observation, card.card, " and ".join(card.precisions))
    if report.tiles_rerun:
        logger.info(
            "%s: %d of the tiles ran again in blocks an earlier run finished, because their edges blend into "
            "blocks written now", observation, report.tiles_rerun,
        )
    return report


class _Progress:
    def __init__(self, total: int, callback: Callable[[int, int], None] | None, done: int = 0) -> None:
        self.total = total
        self.done = done
        self.callback = callback
        if callback is not None:
            callback(done, total)

    def step(self) -> None:
        self.done += 1
        if self.callback is not None:
            self.callback(self.done, self.total)


def _run_card(
    client: distributed.Client,
    cube: CubeInfo,
    job: CardJob,
    done_ids: set[str],
    use_gpu: bool,
    max_in_flight: int,
    progress: _Progress,
    store_ready: concurrent.futures.Future,
    max_predicting: int | None = None,
) -> CardReport:
    """Submit the block tasks of one card, a bounded number of blocks at a time, and wait for them.

    Blocks go in the order of :meth:`~pipeline.tiling.BlockPlan.in_row_pairs`.
    Write tasks are held back until ``store_ready`` (the creation of the
    prediction store) is done, and count towards ``max_in_flight`` meanwhile.
    With ``max_predicting``, a block's model task is submitted only while
    fewer model tasks are unfinished. A worker runs the tasks it was sent in
    order of priority, but is sent a write only after the model task that
    the write needs has finished. Had it been sent the next model task
    ahead, a thread that finishes a block would start that task, and the
    block's sums would wait for their write until a thread is free again.
    """
    plan = job.plan
    blocks = plan.in_row_pairs()
    # Computed once here: the cached value then travels with the plan to every task.
    largest_footprint = plan.largest_footprint
    done = {block.block_id for block in blocks if f"{job.key}-{block.block_id}" in done_ids}
    needed = {block.block_id for block in blocks if block.block_id not in done}
    for block in blocks:
        if block.block_id not in done:
            needed.update(source.block_id for source in plan.spill_sources(block))

    resources = {"GPU": 1} if use_gpu else None
    run = job.run
    overlaps: dict[str, list[distributed.Future]] = {}
    active: set[distributed.Future] = set()
    predicting: set[distributed.Future] = set()
    results: list[BlockResult] = []

    pending_writes: list[tuple[Block, distributed.Future, list[distributed.Future], str, int]] = []

    def collect(finished: set[distributed.Future]) -> None:
        for future in finished:
            result = future.result()
            results.append(result)
            if result.written:
                progress.step()
            future.release()

    def submit_pending_writes(wait: bool = False) -> None:
        if pending_writes and (wait or store_ready.done()):
            store_ready.result()
            for block, prediction, block_overlaps, name, priority in pending_writes:
                active.add(client.submit(
                    write_block, job, block, prediction, block_overlaps, key=f"write-{name}", priority=priority,
                ))
            pending_writes.clear()

    for index, block in enumerate(blocks):
        if block.block_id in done and block.block_id not in needed:
            continue
        submit_pending_writes()
        while len(active) + len(pending_writes) >= max_in_flight or (
                max_predicting is not None and len(predicting) >= max_predicting):
            if pending_writes:
                submit_pending_writes(wait=True)
                continue
            finished = distributed.wait(active | predicting, return_when="FIRST_COMPLETED").done
            predicting -= finished
            collect(finished & active)
            active -= finished

        name = f"{job.key}-{block.block_id}-{run}"
        if use_gpu:
            # The read is a task without the GPU resource, so that a GPU
            # worker reads the next block while its model task runs.
            data = client.submit(
                read_block, cube, plan.footprint(block), block.region, run, largest_footprint,
                key=f"read-{name}", priority=-2 * index,
            )
            prediction = client.submit(
                predict_block, job, block, data, cube, key=f"predict-{name}", resources=resources, priority=-2 * index
            )
            del data
        else:
            prediction = client.submit(
                read_and_predict_block, job, block, cube, key=f"predict-{name}", priority=-2 * index
            )
            if max_predicting is not None:
                predicting.add(prediction)
        # One overlap task per part of the footprint outside the block: the
        # strip below serves the blocks below and diagonally below alike.
        for region, targets in plan.spill_regions(block):
            targets = [target for target in targets if target.block_id not in done]
            if not targets:
                continue
            overlap = client.submit(
                overlap_into, prediction, region, key=f"overlap-{name}-{targets[0].block_id}", priority=1 - 2 * index,
            )
            for target in targets:
                overlaps.setdefault(target.block_id, []).append(overlap)
        if block.block_id in done:
            active.add(client.submit(prediction_stats, prediction, key=f"stats-{name}", priority=1 - 2 * index))
        else:
            pending_writes.append((block, prediction, overlaps.pop(block.block_id, []), name, 1 - 2 * index))
            submit_pending_writes()
        del prediction

    submit_pending_writes(wait=True)
    predicting.clear()
    while active:
        finished = distributed.wait(active, return_when="FIRST_COMPLETED").done
        active -= finished
        collect(finished)

    grid = plan.grid
    return CardReport(
        card=job.card.name,
        task=job.card.task,
        patch_px=job.patch_px,
        tile_px=grid.tile_px,
        overlap_px=grid.overlap_px,
        block_px=plan.block_px,
        blocks_written=sum(result.written for result in results),
        blocks_skipped=len(done),
        tiles_run=sum(result.tiles_run for result in results),
        tiles_skipped=sum(result.tiles_skipped for result in results),
        model_seconds=sum(result.model_seconds for result in results),
        tiles_rerun=sum(result.tiles_run for result in results if not result.written),
        precisions=tuple(sorted({result.precision for result in results if result.precision})),
    )
