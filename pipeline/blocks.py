"""Block tasks of the inference stage: read, predict, hand over overlaps, write.

These functions run on Dask workers. Each receives small frozen records
(:class:`CubeInfo`, :class:`CardJob`, :class:`~pipeline.tiling.Block`) and
reads or writes Zarr itself. Arrays travel only from task to task, between
the tasks of one block and its neighbours, and never inside the graph.

Blending is exact integer arithmetic. Each tile's logits are quantized to
int32 multiples of ``1 / LOGIT_SCALE`` (see :class:`BlendAccumulator`) and
each tile adds ``quantized * weight`` with integer blend weights of at most
``BLEND_LEVELS ** 2``. At most four tiles cover a pixel, because the overlap
is at most half a tile, so every partial sum stays below 2**31. The int32
sums are therefore exact and do not depend on the order in which tiles or
blocks are added. A scene gives the same bytes however it is split.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from pipeline import array_cache, blend_kernels, chunk_cache, chunk_io, layout, scratch
from pipeline.model.precision import autocast, precision_for_device
from pipeline.model_cache import model_for
from pipeline.tiling import BLEND_LEVELS, Block, BlockPlan, Tile, blend_window

logger = logging.getLogger(__name__)

LOGIT_SCALE = 2**8
"""Quantization step of blended logits is ``1 / LOGIT_SCALE``."""
LOGIT_LIMIT = 16
"""Logits are clamped to ``[-LOGIT_LIMIT, LOGIT_LIMIT]``. Beyond that, softmax and sigmoid round to 0 or 1 in 8 bits."""
_MAX_TILES_PER_PIXEL = 4
if _MAX_TILES_PER_PIXEL * LOGIT_LIMIT * LOGIT_SCALE * BLEND_LEVELS**2 >= 2**31:
    raise ImportError("LOGIT_LIMIT, LOGIT_SCALE and BLEND_LEVELS let a blend sum overflow int32; lower one of them")

_SOFTMAX_ROWS = 32
"""Rows per band of the softmax in :func:`_output_arrays`: 10 classes of 1024 px fill 1.3 MB."""

# One model call at a time per GPU worker process, so that two block tasks on
# one worker do not split the GPU's memory. On CPU, block tasks run the model
# side by side, each with its share of the worker's cores (``CardJob.threads``).
_GPU_LOCK = threading.Lock()


@dataclasses.dataclass(frozen=True)
class CubeInfo:
    """Description of an input cube for block tasks: URL, size, band wavelengths and nodata value."""

    url: str
    storage_options: tuple[tuple[str, Any], ...]
    height: int
    width: int
    wavelengths_um: tuple[float, ...]
    fill: int


@dataclasses.dataclass(frozen=True)
class CardJob:
    """One model card applied to one scene: tiling, batching and output settings."""

    card: Any
    fingerprint: str
    key: str
    plan: BlockPlan
    patch_px: int
    batch_size: int
    precision: str  # "auto", "float32" or "bfloat16", resolved per worker device
    threads: int | None
    prediction_url: str
    storage_options: tuple[tuple[str, Any], ...]
    manifest_url: str | None
    observation: str
    band_indices: tuple[int, ...] | None = None  # cube bands fed to this card's model; None: all
    probabilities: bool = True  # a land-cover card also writes each class's probability
    run: str = ""  # Token of this run. Block tasks keep the arrays they open for the run's other blocks.


@dataclasses.dataclass
class BlockPrediction:
    """Blended sums of one block's tiles over its footprint, plus the block's nodata mask.

    ``logit_sum`` has shape ``(classes, y1 - y0, x1 - x0)`` and ``weight_sum``
    ``(y1 - y0, x1 - x0)``, both int32; both are ``None`` when every tile was
    nodata.
    """

    y0: int
    y1: int
    x0: int
    x1: int
    logit_sum: np.ndarray | None
    weight_sum: np.ndarray | None
    nodata: np.ndarray
    tiles_run: int
    tiles_skipped: int
    model_seconds: float
    precision: str = ""  # Precision the model ran in. Empty when no tile ran.


@dataclasses.dataclass
class Overlap:
    """The part of a neighbour's blended sums that falls inside one block."""

    y0: int
    y1: int
    x0: int
    x1: int
    logit_sum: np.ndarray
    weight_sum: np.ndarray


@dataclasses.dataclass(frozen=True)
class BlockResult:
    """Summary of one block task, returned to the driver."""

    block_id: str
    written: bool
    tiles_run: int
    tiles_skipped: int
    model_seconds: float
    precision: str = ""


def read_block(
    cube: CubeInfo,
    footprint: tuple[int, int, int, int],
    block: tuple[int, int, int, int] | None = None,
    run: str | None = None,
    largest_footprint: tuple[int, int] | None = None,
) -> np.ndarray:
    """Read reflectance ``(band, y, x)`` int16 of a footprint ``(y0, y1, x0, x1)`` from the cube.

    Given the ``block`` region the read is for and a ``run`` token shared by
    the run's reads, chunks that later blocks read again stay decoded in this
    worker process (:mod:`pipeline.chunk_cache`), up to the number of halo
    chunks of one block, whatever the scene's width. With a ``run`` token the
    cube's array is also opened only once per run and process
    (:mod:`pipeline.array_cache`). Given the ``largest_footprint`` (height,
    width) of the run's blocks, a new buffer for the read is made that large,
    so that the process's pool (:mod:`pipeline.scratch`) can hand it out again
    for any block.
    """
    y0, y1, x0, x1 = footprint
    array = array_cache.open_array(cube.url, layout.REFLECTANCE_VAR, "r", dict(cube.storage_options), run)
    bands = array.shape[0]
    if block is None or run is None or array.chunks[0] != bands:
        return np.asarray(array[:, y0:y1, x0:x1])
    # Room for the chunks of one block's halo: a column to its right, a row
    # below and the corner. The next block in the row reads the column soon.
    # The chunks below wait for the next row of blocks, so they are kept
    # only where a whole row of them fits in that room. On wider scenes they
    # would be evicted before the next row reads them.
    _, chunk_y, chunk_x = array.chunks
    block_y0, block_y1, block_x0, block_x1 = block
    halo_chunks = math.ceil((block_y1 - block_y0) / chunk_y) + math.ceil((block_x1 - block_x0) / chunk_x) + 1
    keep_below = math.ceil(array.shape[2] / chunk_x) <= halo_chunks
    limit_bytes = halo_chunks * array.dtype.itemsize * math.prod(array.chunks)
    capacity = bands * math.prod(largest_footprint) * array.dtype.itemsize if largest_footprint else 0
    return chunk_cache.read_region_cached(
        array, (cube.url, run), footprint, block, limit_bytes, keep_below=keep_below, capacity=capacity
    )


def _device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _nodata_mask(data: np.ndarray, fill: int) -> np.ndarray:
    """Return a ``(y, x)`` mask, True where any band of ``data`` (band, y, x) is the fill value."""
    if fill == np.iinfo(data.dtype).min:
        # The fill is the smallest value, so one minimum over bands finds it.
        return data.min(axis=0) == fill
    return (data == fill).any(axis=0)


@dataclasses.dataclass(frozen=True)
class _TileInput:
    """How tiles are cut from stored integers: per band ``(stored * gain - mean) / std`` in float32.

    ``prepared`` tells whether that is the model's input already, or
    reflectance that the card's ``prepare_input`` still converts.
    """

    gain: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    prepared: bool

    @classmethod
    def reflectance(cls, bands: int) -> _TileInput:
        """Return a cut to reflectance, which the card's ``prepare_input`` then converts."""
        return cls(np.full(bands, layout.REFLECTANCE_SCALE, np.float32), np.zeros(bands, np.float32),
                   np.ones(bands, np.float32), prepared=False)

    @classmethod
    def for_card(cls, card: Any, wavelengths_um: Sequence[float]) -> _TileInput:
        """Return the cut for ``card``, with its input conversion folded in where the card states one per band."""
        bands = len(wavelengths_um)
        stated = getattr(card, "stored_input_transform", None)
        transform = stated(wavelengths_um, layout.REFLECTANCE_SCALE) if stated is not None else None
        if transform is None:
            return cls.reflectance(bands)
        if len(transform.gain) != bands:
            raise ValueError(
                f"card {getattr(card, 'name', '?')!r} states its input conversion for {len(transform.gain)} bands, "
                f"but the model gets {bands}; fix the card's stored_input_transform"
            )
        return cls(np.asarray(transform.gain, np.float32), np.asarray(transform.mean, np.float32),
                   np.asarray(transform.std, np.float32), prepared=True)


def _cut_tile(data: np.ndarray, nodata: np.ndarray, tile: Tile, origin: tuple[int, int], out: np.ndarray,
              tile_input: _TileInput | None = None) -> None:
    """Write one tile of the block data into ``out`` (band, tile, tile) as float32.

    Without ``tile_input`` the values are reflectance. Nodata pixels count as
    reflectance 0. Where the tile passes the scene's far edges, it is padded
    by mirroring the scene (symmetric padding).
    """
    if tile_input is None:
        tile_input = _TileInput.reflectance(data.shape[0])
    tile_px = out.shape[-1]
    height, width = nodata.shape
    rows = slice(tile.y0 - origin[0], min(tile.y0 - origin[0] + tile_px, height))
    cols = slice(tile.x0 - origin[1], min(tile.x0 - origin[1] + tile_px, width))
    blend_kernels.cut_tile(data, nodata, rows.start, cols.start, rows.stop - rows.start, cols.stop - cols.start,
                           tile_input.gain, tile_input.mean, tile_input.std, out)


def _run_batch(model, card, batch: np.ndarray, wavelengths_um: list[float], patch_px: int,
               device: torch.device, precision: str, prepared: bool = False) -> torch.Tensor:
    """Run one batch ``(B, band, tile, tile)`` and return its float32 logits on the CPU.

    Unless the batch is ``prepared`` (the model's input already), the card's
    ``prepare_input`` converts it. It may change the tensor it gets in place:
    on CPU that is ``batch`` itself, which the caller cuts anew for each call.
    """
    inputs = torch.from_numpy(batch).to(device)
    with torch.inference_mode(), autocast(device, precision):
        if not prepared:
            inputs = card.prepare_input(inputs, wavelengths_um)
        logits = model(inputs, wavelengths_um=wavelengths_um, patch_size=patch_px)
        return logits.float().cpu()


def _raise_for_status(status: int, name: str) -> None:
    if status == blend_kernels.BLEND_NAN:
        raise FloatingPointError(f"model {name!r} returned NaN logits; check its weights and input scaling")
    if status == blend_kernels.BLEND_TOP_NOT_FINITE:
        raise FloatingPointError(
            f"model {name!r} returned infinite logits as a pixel's largest; check its weights and input scaling"
        )


class BlendAccumulator:
    """Exact int32 blend sums of quantized tile logits over a footprint ``(y0, y1, x0, x1)``.

    Each tile's float32 logits are quantized to int32 multiples of
    ``1 / LOGIT_SCALE`` and added with the integer blend window as weight.
    With several classes, each pixel's largest logit is first subtracted:
    softmax does not change, and a blend of shifted logits differs from the
    blend of the originals by the same amount in every class, so the blended
    probabilities do not change either. The shifted logits are then at most
    0 and are clamped below at ``-LOGIT_LIMIT``. A single class (a sigmoid)
    is clamped to ``[-LOGIT_LIMIT, LOGIT_LIMIT]``.
    """

    def __init__(self, footprint: tuple[int, int, int, int], window: np.ndarray, name: str,
                 largest_footprint: tuple[int, int] | None = None) -> None:
        self.y0, self.y1, self.x0, self.x1 = footprint
        # New buffers for the sums fit the largest footprint of the run, so that the pool hands them out again.
        self._largest_px = math.prod(largest_footprint) if largest_footprint else 0
        self.window = np.ascontiguousarray(window, dtype=np.int32)
        self.name = name
        # The sums start undefined. The first tile over a pixel stores its
        # term and later ones add to it, which saves zeroing 59 MB for a
        # 1216 px footprint of 10 classes. _written counts the columns at the
        # start of each row that contain sums. The properties below zero the
        # rest when the sums are read.
        self._logit_sum: np.ndarray | None = None
        self._weight_sum = scratch.BLOCK_ARRAYS.empty((self.y1 - self.y0, self.x1 - self.x0), np.int32)
        self._written = np.zeros(self.y1 - self.y0, dtype=np.int64)

    @property
    def logit_sum(self) -> np.ndarray | None:
        """int32 ``(classes, y, x)`` sums over the footprint, ``None`` before the first tile."""
        if self._logit_sum is not None:
            blend_kernels.zero_unwritten(self._logit_sum, self._weight_sum, self._written)
        return self._logit_sum

    @property
    def weight_sum(self) -> np.ndarray:
        """int32 ``(y, x)`` sums of the blend weights over the footprint."""
        if self._logit_sum is None:
            self._weight_sum.fill(0)
        else:
            blend_kernels.zero_unwritten(self._logit_sum, self._weight_sum, self._written)
        return self._weight_sum

    def add(self, tile: Tile, logits: np.ndarray, scene_shape: tuple[int, int]) -> None:
        """Add one tile's float32 logits ``(classes, tile, tile)``.

        Raises
        ------
        FloatingPointError
            If the logits contain NaN, or a pixel's largest logit is infinite.
        """
        if self._logit_sum is None:
            self._logit_sum = scratch.BLOCK_ARRAYS.empty(
                (logits.shape[0], *self._weight_sum.shape), np.int32,
                capacity=logits.shape[0] * self._largest_px * np.dtype(np.int32).itemsize,
            )
        height = min(self.window.shape[0], scene_shape[0] - tile.y0)
        width = min(self.window.shape[1], scene_shape[1] - tile.x0)
        # The compiled loop does not check bounds, so this does.
        if (tile.y0 < self.y0 or tile.x0 < self.x0 or tile.y0 + height > self.y1 or tile.x0 + width > self.x1
                or logits.shape[1:] != self.window.shape or logits.shape[0] != self._logit_sum.shape[0]):
            raise ValueError(
                f"tile at ({tile.y0}, {tile.x0}) with logits of shape {logits.shape} does not fit the footprint "
                f"{(self.y0, self.y1, self.x0, self.x1)} with {self._logit_sum.shape[0]} classes and "
                f"{self.window.shape} px tiles"
            )
        logits = np.asarray(logits, dtype=np.float32)
        channels_last = logits.transpose(1, 2, 0)
        if not logits.flags.c_contiguous and channels_last.flags.c_contiguous:
            kernel, logits = blend_kernels.blend_tile_channels_last, channels_last
        else:
            kernel, logits = blend_kernels.blend_tile, np.ascontiguousarray(logits)
        status = kernel(logits, self.window, self._logit_sum, self._weight_sum, self._written, tile.y0 - self.y0,
                        tile.x0 - self.x0, height, width, LOGIT_LIMIT, LOGIT_SCALE)
        _raise_for_status(status, self.name)


def _check_logits(job: CardJob, logits: torch.Tensor, tile_px: int) -> None:
    if logits.shape[-2:] != (tile_px, tile_px):
        raise ValueError(
            f"model of card {job.card.name!r} returned logits of size {tuple(logits.shape[-2:])} for "
            f"{tile_px} px tiles; a dense head must return logits at the tile size"
        )
    classes = logits.shape[1]
    expected = len(job.card.class_names) if job.card.task == "landcover" else classes
    if classes != expected:
        raise ValueError(
            f"model of card {job.card.name!r} returned {classes} classes, but the card lists {expected}; "
            "fix the card's classes or its checkpoint"
        )


def predict_block(job: CardJob, block: Block, data: np.ndarray, cube: CubeInfo) -> BlockPrediction:
    """Run the block's own tiles through the model and blend them over its footprint.

    Tiles that are entirely nodata are skipped without a model call. The
    others are cut into one reused batch buffer and run in batches of
    at most ``job.batch_size``, split as evenly as possible. A batch never
    contains a single tile, because PyTorch's CPU kernels for a batch of one
    give other bits than for larger batches (seen with FlexiMo on torch
    2.13). A lone tile therefore runs together with a copy of itself. On CUDA out-of-memory the batch is halved
    and retried, down to single tiles.

    Parameters
    ----------
    job
        The card and tiling this block belongs to.
    block
        The block whose tiles (origins inside it) are run.
    data
        Reflectance of the block's footprint, ``(band, y, x)`` int16, from :func:`read_block`.
    cube
        The input cube's description (size, wavelengths, nodata value).

    Returns
    -------
    BlockPrediction
        Exact int32 blend sums over the footprint.
    """
    plan = job.plan
    tile_px = plan.grid.tile_px
    footprint = plan.footprint(block)
    y0, y1, x0, x1 = footprint
    wavelengths_um = list(cube.wavelengths_um)
    if job.band_indices is not None:
        data = data[list(job.band_indices)]
        wavelengths_um = [wavelengths_um[index] for index in job.band_indices]
    nodata = _nodata_mask(data, cube.fill)
    nodata_block = nodata[: block.y1 - y0, : block.x1 - x0].copy()

    tiles = []
    for tile in plan.tiles(block):
        rows = slice(tile.y0 - y0, tile.y0 - y0 + tile_px)
        cols = slice(tile.x0 - x0, tile.x0 - x0 + tile_px)
        if not nodata[rows, cols].all():
            tiles.append(tile)
    skipped = block.tile_count - len(tiles)
    if not tiles:
        logger.debug("block %s of %s: all %d tiles nodata", block.block_id, job.key, skipped)
        return BlockPrediction(y0, y1, x0, x1, None, None, nodata_block, 0, skipped, 0.0)

    device = _device()
    precision = precision_for_device(job.precision, device)
    model = model_for(job.card, job.fingerprint, device)
    tile_input = _TileInput.for_card(job.card, wavelengths_um)
    window = blend_window(tile_px, plan.grid.overlap_px)
    accumulator = BlendAccumulator(footprint, window, getattr(job.card, "name", "?"), plan.largest_footprint)
    batch_size = max(2, job.batch_size)
    buffer = np.empty((batch_size, data.shape[0], tile_px, tile_px), dtype=np.float32)
    single_tiles = False
    model_seconds = 0.0
    start = 0
    while start < len(tiles):
        # Equal batches: 25 tiles at batch size 8 run as 7, 6, 6 and 6, not
        # as 8, 8, 8 and a last tile with its copy.
        remaining = len(tiles) - start
        batches = -(-remaining // batch_size)
        chunk = tiles[start: start + -(-remaining // batches)]
        for index, tile in enumerate(chunk):
            _cut_tile(data, nodata, tile, (y0, x0), buffer[index], tile_input)
        count = len(chunk)
        if count == 1 and not single_tiles:
            buffer[1] = buffer[0]
            count = 2

        with _GPU_LOCK if device.type == "cuda" else contextlib.nullcontext():
            if device.type == "cpu" and job.threads:
                torch.set_num_threads(job.threads)
            started = time.perf_counter()
            try:
                logits = _run_batch(model, job.card, buffer[:count], wavelengths_um, job.patch_px, device,
                                    precision, tile_input.prepared)
            except torch.cuda.OutOfMemoryError:
                if single_tiles:
                    raise
                torch.cuda.empty_cache()
                batch_size, single_tiles = (batch_size // 2, False) if batch_size > 2 else (1, True)
                logger.warning("CUDA out of memory on %s; retrying with batch size %d", job.key, batch_size)
                continue
            finally:
                model_seconds += time.perf_counter() - started

        _check_logits(job, logits, tile_px)
        for tile, tile_logits in zip(chunk, logits.numpy()):
            accumulator.add(tile, tile_logits, (cube.height, cube.width))
        start += len(chunk)

    logger.debug("block %s of %s: %d tiles run, %d nodata", block.block_id, job.key, len(tiles), skipped)
    return BlockPrediction(
        y0, y1, x0, x1, accumulator.logit_sum, accumulator.weight_sum, nodata_block,
        len(tiles), skipped, model_seconds, precision,
    )


def read_and_predict_block(job: CardJob, block: Block, cube: CubeInfo) -> BlockPrediction:
    """Read the block's footprint and predict it in one task: :func:`read_block`, then :func:`predict_block`.

    CPU workers run this instead of a read task and a model task. Their task
    threads each read and run the model, so one thread's read overlaps the
    other's model calls anyway. One task instead of two saves Dask's
    per-task work, and the footprint is read only when a thread is free to
    predict it, not held in memory while the block waits.
    """
    data = read_block(cube, job.plan.footprint(block), block.region, job.run, job.plan.largest_footprint)
    return predict_block(job, block, data, cube)


def overlap_into(prediction: BlockPrediction, region: tuple[int, int, int, int], *,
                 copy: bool = True) -> Overlap | None:
    """Cut out the part of a block's blend sums that lies inside ``region`` ``(y0, y1, x0, x1)`` of the scene.

    The region is a neighbouring block, or a strip that reaches several
    (:meth:`~pipeline.tiling.BlockPlan.spill_regions`). With ``copy=False``
    the overlap contains views of the prediction's arrays.
    """
    if prediction.logit_sum is None:
        return None
    y0, y1 = max(prediction.y0, region[0]), min(prediction.y1, region[1])
    x0, x1 = max(prediction.x0, region[2]), min(prediction.x1, region[3])
    if y0 >= y1 or x0 >= x1:
        return None
    rows = slice(y0 - prediction.y0, y1 - prediction.y0)
    cols = slice(x0 - prediction.x0, x1 - prediction.x0)
    logit_sum, weight_sum = prediction.logit_sum[:, rows, cols], prediction.weight_sum[rows, cols]
    if copy:
        logit_sum, weight_sum = logit_sum.copy(), weight_sum.copy()
    return Overlap(y0, y1, x0, x1, logit_sum, weight_sum)


def cloud_class_index(card: Any) -> int:
    """Return the index of the card's class named "cloud" (any case)."""
    names = [name.lower() for name in card.class_names]
    if "cloud" not in names:
        raise ValueError(f"cloud card {card.name!r} has no class named 'cloud' among {list(card.class_names)}")
    return names.index("cloud")


def _merge_rows(parts: Sequence[Overlap], block: Block, row0: int, logit_sum: np.ndarray,
                weight_sum: np.ndarray) -> None:
    """Write the sums of all ``parts`` over rows ``row0`` to ``row0 + n`` of ``block`` into ``(classes, n, W)`` buffers.

    The buffers are small enough to stay in cache, so the merged sums of a
    whole block are never built. Integer sums make the result independent of
    the order of the parts.
    """
    rows = logit_sum.shape[1]
    top, bottom = block.y0 + row0, block.y0 + row0 + rows
    first = parts[0]
    if first.y0 <= top and first.y1 >= bottom and first.x0 <= block.x0 and first.x1 >= block.x1:
        # The block's own tiles cover these rows whole: start from theirs.
        cols = slice(block.x0 - first.x0, block.x1 - first.x0)
        logit_sum[:] = first.logit_sum[:, top - first.y0: bottom - first.y0, cols]
        weight_sum[:] = first.weight_sum[top - first.y0: bottom - first.y0, cols]
        parts = parts[1:]
    else:
        logit_sum.fill(0)
        weight_sum.fill(0)
    for part in parts:
        y0, y1 = max(part.y0, top), min(part.y1, bottom)
        x0, x1 = max(part.x0, block.x0), min(part.x1, block.x1)
        if y0 >= y1 or x0 >= x1:
            continue
        source = (slice(y0 - part.y0, y1 - part.y0), slice(x0 - part.x0, x1 - part.x0))
        target = (slice(y0 - top, y1 - top), slice(x0 - block.x0, x1 - block.x0))
        logit_sum[:, target[0], target[1]] += part.logit_sum[:, source[0], source[1]]
        weight_sum[target] += part.weight_sum[source]


def _output_arrays(job: CardJob, block: Block, parts: Sequence[Overlap], nodata: np.ndarray) -> dict[str, np.ndarray]:
    """Turn the int32 blend sums of ``parts`` over ``block`` into the uint8 output variables of the card's task.

    ``parts`` are the block's own sums and its neighbours' overlaps, in block
    coordinates of the scene. They are merged and turned into outputs in
    bands of rows that stay in cache. ``nodata`` gets the pixels that no tile
    covered: every tile over them was skipped as all nodata.

    The division by the weight sum runs in float64 and is exact where every
    tile gave the same quantized logit, so a pointwise model's output is
    reproduced exactly.
    """
    fill = np.uint8(layout.PROBABILITY_FILL)
    classes = parts[0].logit_sum.shape[0]
    height, width = block.y1 - block.y0, block.x1 - block.x0
    labels = np.empty((height, width), dtype=np.uint8)
    if job.card.task == "cloud" or classes == 1:
        outputs = {layout.CLOUD_PROBABILITY_VAR: np.empty((height, width), dtype=np.uint8)}
    else:
        outputs = {layout.LANDCOVER_VAR: labels, layout.LANDCOVER_CONFIDENCE_VAR: np.empty((height, width), np.uint8)}
        if job.probabilities:
            outputs[layout.LANDCOVER_PROBABILITY_VAR] = np.empty((classes, height, width), dtype=np.uint8)

    # Softmax over classes: logits minus each pixel's largest, exponentials
    # in place, then the outputs. The top class's exponential is 1. Bands of
    # rows keep the sums and the float32 exponentials in cache, which makes
    # this almost twice as fast as passes over the whole block.
    for row0 in range(0, height, _SOFTMAX_ROWS):
        rows = min(_SOFTMAX_ROWS, height - row0)
        logit_sum = np.empty((classes, rows, width), dtype=np.int32)
        weight_sum = np.empty((rows, width), dtype=np.int32)
        _merge_rows(parts, block, row0, logit_sum, weight_sum)
        band_nodata = nodata[row0: row0 + rows]
        band_nodata |= weight_sum == 0

        if classes == 1:
            denominator = np.where(weight_sum == 0, 1, weight_sum).astype(np.float64)
            denominator *= LOGIT_SCALE
            logits = np.divide(logit_sum[0], denominator).astype(np.float32)
            probability = 1.0 / (1.0 + np.exp(-logits))
            percent = np.rint(probability * np.float32(100)).astype(np.uint8)
            outputs[layout.CLOUD_PROBABILITY_VAR][row0: row0 + rows] = np.where(band_nodata, fill, percent)
            continue

        exponentials = np.empty((classes, rows, width), dtype=np.float32)
        blend_kernels.shift_by_top(logit_sum, weight_sum, LOGIT_SCALE, exponentials, labels[row0: row0 + rows])
        np.exp(exponentials, out=exponentials)
        if job.card.task == "cloud":
            blend_kernels.class_percent(exponentials, nodata, cloud_class_index(job.card), fill,
                                        outputs[layout.CLOUD_PROBABILITY_VAR], row0)
        elif job.probabilities:
            blend_kernels.softmax_outputs(exponentials, nodata, fill, layout.PROBABILITY_SCALE,
                                          outputs[layout.LANDCOVER_PROBABILITY_VAR], labels,
                                          outputs[layout.LANDCOVER_CONFIDENCE_VAR], row0)
        else:
            blend_kernels.label_confidence(exponentials, nodata, fill, labels,
                                           outputs[layout.LANDCOVER_CONFIDENCE_VAR], row0)
    return outputs


def write_block(
    job: CardJob, block: Block, prediction: BlockPrediction, overlaps: Sequence[Overlap | None]
) -> BlockResult:
    """Add the neighbours' overlaps, turn logits into outputs, write the block's region, mark it done."""
    height, width = block.y1 - block.y0, block.x1 - block.x0
    nodata = prediction.nodata.copy()
    parts = [overlap_into(prediction, block.region, copy=False), *overlaps]
    parts = [part for part in parts if part is not None]
    has_data = bool(parts)
    if has_data:
        outputs = _output_arrays(job, block, parts, nodata)
    else:
        outputs = _empty_outputs(job, height, width)

    for name, values in outputs.items():
        array = array_cache.open_array(job.prediction_url, name, "r+", dict(job.storage_options), job.run)
        access = chunk_io.chunk_access(array) if has_data else None
        if access is not None:
            access.write_region((0,) * (values.ndim - 2) + (block.y0, block.x0), values)
            continue
        if has_data:
            # Skip zarr's check of every chunk for all-fill values: a block
            # with data rarely has such a chunk. A block without data keeps
            # the check, so none of its chunks is stored.
            array = array.with_config({"write_empty_chunks": True})
        array[..., block.y0: block.y1, block.x0: block.x1] = values

    if job.manifest_url is not None:
        from pipeline.manifest import Manifest

        Manifest(job.manifest_url, dict(job.storage_options)).mark_block_done(
            "infer", job.observation, f"{job.key}-{block.block_id}",
            tiles_run=prediction.tiles_run, tiles_skipped=prediction.tiles_skipped,
        )
    return BlockResult(
        block.block_id, True, prediction.tiles_run, prediction.tiles_skipped, prediction.model_seconds,
        prediction.precision,
    )


def _empty_outputs(job: CardJob, height: int, width: int) -> dict[str, np.ndarray]:
    fill = layout.PROBABILITY_FILL
    if job.card.task == "cloud":
        return {layout.CLOUD_PROBABILITY_VAR: np.full((height, width), fill, np.uint8)}
    outputs = {
        layout.LANDCOVER_VAR: np.full((height, width), fill, np.uint8),
        layout.LANDCOVER_CONFIDENCE_VAR: np.full((height, width), fill, np.uint8),
    }
    if job.probabilities:
        classes = len(job.card.class_names)
        outputs[layout.LANDCOVER_PROBABILITY_VAR] = np.full((classes, height, width), fill, np.uint8)
    return outputs


def prediction_stats(prediction: BlockPrediction) -> BlockResult:
    """Summarise a prediction that is computed only for its overlaps (its own block is done)."""
    return BlockResult(
        "", False, prediction.tiles_run, prediction.tiles_skipped, prediction.model_seconds, prediction.precision
    )
