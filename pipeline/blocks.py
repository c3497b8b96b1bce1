"""Block tasks of the inference stage: read, predict, hand over overlaps, write.

These functions run on Dask workers. Each receives small frozen records
(:class:`CubeInfo`, :class:`CardJob`, :class:`~pipeline.tiling.Block`) and
reads or writes Zarr itself; arrays only travel between the tasks of
neighbouring blocks, never through the graph.

Blending is exact integer arithmetic. Logits are clamped to
``[-LOGIT_LIMIT, LOGIT_LIMIT]`` and rounded to multiples of
``1 / LOGIT_SCALE``; each tile adds ``logit * LOGIT_SCALE * weight`` with
integer blend weights. Every term and partial sum is an integer below 2**53,
so the float64 sums are exact and do not depend on the order in which tiles
or blocks are added: a scene gives the same bytes however it is split.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from pipeline import layout
from pipeline.model.precision import autocast
from pipeline.model_cache import model_for
from pipeline.stores import zarr_store
from pipeline.tiling import Block, BlockPlan, Tile, blend_window

logger = logging.getLogger(__name__)

LOGIT_SCALE = 2.0**16
LOGIT_LIMIT = 2.0**15

# One model call at a time per worker process, so that two block tasks on one
# worker do not split its cores (CPU) or its memory (GPU) between them.
_MODEL_LOCK = threading.Lock()


@dataclasses.dataclass(frozen=True)
class CubeInfo:
    """Where and what the input cube is: URL, size, bands and nodata value."""

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
    precision: str
    threads: int | None
    prediction_url: str
    storage_options: tuple[tuple[str, Any], ...]
    manifest_url: str | None
    observation: str


@dataclasses.dataclass
class BlockPrediction:
    """Blended sums of one block's tiles over its footprint, plus the block's nodata mask.

    ``logit_sum`` has shape ``(classes, y1 - y0, x1 - x0)`` and ``weight_sum``
    ``(y1 - y0, x1 - x0)``; both are ``None`` when every tile was nodata.
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
    """What one block task did (returned to the driver)."""

    block_id: str
    written: bool
    tiles_run: int
    tiles_skipped: int
    model_seconds: float


def read_block(cube: CubeInfo, footprint: tuple[int, int, int, int]) -> np.ndarray:
    """Read reflectance ``(band, y, x)`` int16 of a footprint ``(y0, y1, x0, x1)`` from the cube."""
    import zarr

    y0, y1, x0, x1 = footprint
    store = zarr_store(cube.url, "r", storage_options=dict(cube.storage_options))
    array = zarr.open_group(store, mode="r")[layout.REFLECTANCE_VAR]
    return np.asarray(array[:, y0:y1, x0:x1])


def _device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _cut_tile(data: np.ndarray, tile: Tile, origin: tuple[int, int], tile_px: int, cube: CubeInfo):
    """Cut one tile out of the block data; pad it symmetrically where it passes the scene edge."""
    y_stop = min(tile.y0 + tile_px, cube.height)
    x_stop = min(tile.x0 + tile_px, cube.width)
    window = data[:, tile.y0 - origin[0]: y_stop - origin[0], tile.x0 - origin[1]: x_stop - origin[1]]
    valid = (window != cube.fill).all(axis=0)
    if not valid.any():
        return None, (0, 0)

    reflectance = np.where(valid, window.astype(np.float32) * np.float32(layout.REFLECTANCE_SCALE), np.float32(0))
    height, width = window.shape[1:]
    if (height, width) != (tile_px, tile_px):
        reflectance = np.pad(reflectance, ((0, 0), (0, tile_px - height), (0, tile_px - width)), mode="symmetric")
    return reflectance, (height, width)


def _run_batch(model, card, batch: np.ndarray, wavelengths_um: list[float], patch_px: int,
               device: torch.device, precision: str) -> torch.Tensor:
    inputs = torch.from_numpy(batch).to(device)
    with torch.inference_mode(), autocast(device, precision):
        prepared = card.prepare_input(inputs, wavelengths_um)
        logits = model(prepared, wavelengths_um=wavelengths_um, patch_size=patch_px)
    return logits.float().cpu()


def _run_batches(model, job: CardJob, tiles: list[np.ndarray], wavelengths_um: list[float],
                 device: torch.device) -> list[torch.Tensor]:
    """Run tiles through the model in batches; on CUDA out-of-memory, halve the batch and retry.

    A batch never holds a single tile: a lone last tile is run together with
    a copy of itself. NOTE: on CPU, PyTorch takes other kernels for a batch
    of one than for larger batches, so a lone tile's logits differ in the last
    bits (seen with FlexiMo, torch 2.13), while batches of two or more give
    each tile the same bits; the invariance tests rely on this.
    """
    outputs: list[torch.Tensor] = []
    batch_size = max(2, job.batch_size)
    single_tiles = False
    start = 0
    while start < len(tiles):
        chunk = tiles[start: start + batch_size]
        batch = np.stack(chunk if len(chunk) > 1 or single_tiles else chunk * 2)
        try:
            logits = _run_batch(model, job.card, batch, wavelengths_um, job.patch_px, device, job.precision)
        except torch.cuda.OutOfMemoryError:
            if single_tiles:
                raise
            torch.cuda.empty_cache()
            if batch_size > 2:
                batch_size //= 2
            else:
                batch_size, single_tiles = 1, True
            logger.warning("CUDA out of memory on %s; retrying with batch size %d", job.key, batch_size)
            continue
        outputs.extend(logits[: len(chunk)].unbind(0))
        start += len(chunk)
    return outputs


def _quantize(logits: torch.Tensor, name: str) -> torch.Tensor:
    if torch.isnan(logits).any():
        raise FloatingPointError(f"model {name!r} returned NaN logits; check its weights and input scaling")
    clamped = logits.clamp(-LOGIT_LIMIT, LOGIT_LIMIT)
    return torch.round(clamped * LOGIT_SCALE).to(torch.float64)


def predict_block(job: CardJob, block: Block, data: np.ndarray, cube: CubeInfo) -> BlockPrediction:
    """Run the block's own tiles through the model and blend them over its footprint.

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
        Integer-valued float64 blend sums over the footprint.
    """
    plan = job.plan
    tile_px = plan.grid.tile_px
    y0, y1, x0, x1 = plan.footprint(block)
    nodata_block = (data[:, : block.y1 - y0, : block.x1 - x0] == cube.fill).any(axis=0)

    tiles, shapes, owned = [], [], []
    skipped = 0
    for tile in plan.tiles(block):
        reflectance, shape = _cut_tile(data, tile, (y0, x0), tile_px, cube)
        if reflectance is None:
            skipped += 1
            continue
        tiles.append(reflectance)
        shapes.append(shape)
        owned.append(tile)
    if not tiles:
        logger.debug("block %s of %s: all %d tiles nodata", block.block_id, job.key, skipped)
        return BlockPrediction(y0, y1, x0, x1, None, None, nodata_block, 0, skipped, 0.0)

    device = _device()
    model = model_for(job.card, job.fingerprint, device)
    wavelengths_um = list(cube.wavelengths_um)
    with _MODEL_LOCK:
        if device.type == "cpu" and job.threads:
            torch.set_num_threads(job.threads)
        started = time.perf_counter()
        outputs = _run_batches(model, job, tiles, wavelengths_um, device)
        model_seconds = time.perf_counter() - started

    classes = outputs[0].shape[0]
    expected = len(job.card.class_names) if job.card.task == "landcover" else classes
    if classes != expected:
        raise ValueError(
            f"model of card {job.card.name!r} returned {classes} classes, but the card lists {expected}; "
            "fix the card's classes or its checkpoint"
        )
    window = torch.from_numpy(blend_window(tile_px, plan.grid.overlap_px).astype(np.float64))
    logit_sum = torch.zeros((classes, y1 - y0, x1 - x0), dtype=torch.float64)
    weight_sum = torch.zeros((y1 - y0, x1 - x0), dtype=torch.float64)
    for tile, (height, width), logits in zip(owned, shapes, outputs):
        if logits.shape[-2:] != (tile_px, tile_px):
            raise ValueError(
                f"model {job.key!r} returned logits of size {tuple(logits.shape[-2:])} for "
                f"{tile_px} px tiles; a dense head must return logits at the tile size"
            )
        weights = window[:height, :width]
        rows = slice(tile.y0 - y0, tile.y0 - y0 + height)
        cols = slice(tile.x0 - x0, tile.x0 - x0 + width)
        logit_sum[:, rows, cols] += _quantize(logits[:, :height, :width], job.key) * weights
        weight_sum[rows, cols] += weights

    logger.debug("block %s of %s: %d tiles run, %d nodata", block.block_id, job.key, len(owned), skipped)
    return BlockPrediction(
        y0, y1, x0, x1, logit_sum.numpy(), weight_sum.numpy(), nodata_block, len(owned), skipped, model_seconds
    )


def overlap_into(prediction: BlockPrediction, target: Block) -> Overlap | None:
    """Cut out the part of a block's blend sums that lies inside a neighbouring block."""
    if prediction.logit_sum is None:
        return None
    y0, y1 = max(prediction.y0, target.y0), min(prediction.y1, target.y1)
    x0, x1 = max(prediction.x0, target.x0), min(prediction.x1, target.x1)
    if y0 >= y1 or x0 >= x1:
        return None
    rows = slice(y0 - prediction.y0, y1 - prediction.y0)
    cols = slice(x0 - prediction.x0, x1 - prediction.x0)
    return Overlap(
        y0, y1, x0, x1,
        prediction.logit_sum[:, rows, cols].copy(),
        prediction.weight_sum[rows, cols].copy(),
    )


def cloud_class_index(card: Any) -> int:
    """Return the index of the card's class named "cloud" (any case)."""
    names = [name.lower() for name in card.class_names]
    if "cloud" not in names:
        raise ValueError(f"cloud card {card.name!r} has no class named 'cloud' among {list(card.class_names)}")
    return names.index("cloud")


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=0, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=0, keepdims=True)
    return shifted


def _class_probabilities(logits: np.ndarray) -> np.ndarray:
    if logits.shape[0] == 1:
        return 1.0 / (1.0 + np.exp(-logits))
    return _softmax(logits)


def _output_arrays(job: CardJob, logits: np.ndarray, nodata: np.ndarray) -> dict[str, np.ndarray]:
    """Turn blended logits ``(classes, y, x)`` into the uint8 output variables of the card's task."""
    probabilities = _class_probabilities(logits.astype(np.float32))
    fill = np.uint8(layout.PROBABILITY_FILL)
    if job.card.task == "cloud":
        cloud_index = cloud_class_index(job.card) if probabilities.shape[0] > 1 else 0
        percent = np.rint(probabilities[cloud_index] * 100).astype(np.uint8)
        return {layout.CLOUD_PROBABILITY_VAR: np.where(nodata, fill, percent)}

    scaled = np.rint(probabilities * layout.PROBABILITY_SCALE).astype(np.uint8)
    scaled[:, nodata] = fill
    labels = probabilities.argmax(axis=0).astype(np.uint8)
    confidence = np.rint(probabilities.max(axis=0) * 100).astype(np.uint8)
    return {
        layout.LANDCOVER_PROBABILITY_VAR: scaled,
        layout.LANDCOVER_VAR: np.where(nodata, fill, labels),
        layout.LANDCOVER_CONFIDENCE_VAR: np.where(nodata, fill, confidence),
    }


def write_block(
    job: CardJob, block: Block, prediction: BlockPrediction, overlaps: Sequence[Overlap | None]
) -> BlockResult:
    """Add the neighbours' overlaps, turn logits into outputs, write the block's region, mark it done."""
    import zarr

    height, width = block.y1 - block.y0, block.x1 - block.x0
    nodata = prediction.nodata.copy()
    parts = [overlap_into(prediction, block), *overlaps]
    parts = [part for part in parts if part is not None]
    if parts:
        classes = parts[0].logit_sum.shape[0]
        logit_sum = np.zeros((classes, height, width), dtype=np.float64)
        weight_sum = np.zeros((height, width), dtype=np.float64)
        for part in parts:
            rows = slice(part.y0 - block.y0, part.y1 - block.y0)
            cols = slice(part.x0 - block.x0, part.x1 - block.x0)
            logit_sum[:, rows, cols] += part.logit_sum
            weight_sum[rows, cols] += part.weight_sum
        # Pixels no tile covered are nodata: every tile over them was skipped as all nodata.
        nodata |= weight_sum == 0
        logits = logit_sum / np.where(weight_sum == 0, 1.0, weight_sum) / LOGIT_SCALE
        outputs = _output_arrays(job, logits, nodata)
    else:
        outputs = _empty_outputs(job, height, width)

    store = zarr_store(job.prediction_url, "r+", storage_options=dict(job.storage_options))
    group = zarr.open_group(store, mode="r+")
    for name, values in outputs.items():
        group[name][..., block.y0: block.y1, block.x0: block.x1] = values

    if job.manifest_url is not None:
        from pipeline.manifest import Manifest

        Manifest(job.manifest_url, dict(job.storage_options)).mark_block_done(
            "infer", job.observation, f"{job.key}-{block.block_id}",
            tiles_run=prediction.tiles_run, tiles_skipped=prediction.tiles_skipped,
        )
    return BlockResult(
        block.block_id, True, prediction.tiles_run, prediction.tiles_skipped, prediction.model_seconds
    )


def _empty_outputs(job: CardJob, height: int, width: int) -> dict[str, np.ndarray]:
    fill = layout.PROBABILITY_FILL
    if job.card.task == "cloud":
        return {layout.CLOUD_PROBABILITY_VAR: np.full((height, width), fill, np.uint8)}
    classes = len(job.card.class_names)
    return {
        layout.LANDCOVER_PROBABILITY_VAR: np.full((classes, height, width), fill, np.uint8),
        layout.LANDCOVER_VAR: np.full((height, width), fill, np.uint8),
        layout.LANDCOVER_CONFIDENCE_VAR: np.full((height, width), fill, np.uint8),
    }


def prediction_stats(prediction: BlockPrediction) -> BlockResult:
    """Summarise a prediction that is computed only for its overlaps (its own block is done)."""
    return BlockResult("", False, prediction.tiles_run, prediction.tiles_skipped, prediction.model_seconds)
