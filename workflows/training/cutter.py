"""Cut training chips from a scene and a label raster, split by scene blocks.

Neighbouring pixels are strongly correlated, so a validation set of random
pixels or random overlapping chips measures memorisation. The scene is cut
into square blocks first, and whole blocks go to validation. Chips never
straddle a block edge, so no validation pixel is inside a training chip.

Which blocks go to validation is chosen by systematic sampling over the
blocks sorted by their share of minority-class pixels: every k-th block for a
validation fraction of 1/k. The held-out blocks then span the range of, for
example, cloud cover in the scene, instead of depending on a lucky draw.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window

from workflows.training.chip_dataset import ChipRecord, ChipSet, write_splits_file
from workflows.training.chip_spec import ChipSpec, write_chip_spec

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Block:
    """A square block of the scene grid, in pixels: rows ``row0:row1``, columns ``col0:col1``."""

    row: int
    col: int
    row0: int
    col0: int
    row1: int
    col1: int

    @property
    def block_id(self) -> str:
        """Stable id such as ``"r2c1"``."""
        return f"r{self.row}c{self.col}"


def block_grid(height: int, width: int, block_size: int) -> list[Block]:
    """Split an ``height`` × ``width`` pixel grid into blocks of ``block_size`` pixels.

    The last row and column of blocks take the remainder, so every pixel is in
    exactly one block and no block is smaller than half ``block_size`` unless
    the scene is.
    """
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")

    def edges(length: int) -> list[int]:
        count = max(1, int(round(length / block_size)))
        return [round(i * length / count) for i in range(count + 1)]

    row_edges, col_edges = edges(height), edges(width)
    return [
        Block(r, c, row_edges[r], col_edges[c], row_edges[r + 1], col_edges[c + 1])
        for r in range(len(row_edges) - 1)
        for c in range(len(col_edges) - 1)
    ]


def choose_validation_blocks(scores: Sequence[float], val_fraction: float) -> list[int]:
    """Pick validation blocks by systematic sampling over ``scores``.

    Parameters
    ----------
    scores
        One number per block (e.g. its minority-class share); blocks are
        sorted by it before sampling.
    val_fraction
        Fraction of blocks to hold out, ``0 < val_fraction < 1``.

    Returns
    -------
    list[int]
        Sorted indices of the held-out blocks; at least one, and at least one
        block is left for training.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}")
    count = len(scores)
    if count < 2:
        raise ValueError(
            f"the scene has {count} block(s); a block split needs at least 2, use a smaller block_size"
        )

    order = sorted(range(count), key=lambda i: (scores[i], i))
    held_out = min(count - 1, max(1, int(round(count * val_fraction))))
    step = count / held_out
    chosen = {order[min(count - 1, int(step * k + step / 2))] for k in range(held_out)}
    return sorted(chosen)


def chip_windows(block: Block, chip_size: int, stride: int) -> list[tuple[int, int]]:
    """Return the ``(row, col)`` upper-left corners of chips that fit inside ``block``.

    Chips are laid out from the block's corner with ``stride``. When the block
    is not a whole number of strides, one more chip is aligned to the block's
    far edge, so the block is covered completely.
    """
    if chip_size <= 0 or stride <= 0:
        raise ValueError(f"chip_size and stride must be positive, got {chip_size} and {stride}")

    def starts(first: int, last: int) -> list[int]:
        if last - first < chip_size:
            return []
        positions = list(range(first, last - chip_size + 1, stride))
        if positions[-1] != last - chip_size:
            positions.append(last - chip_size)
        return positions

    return [(r, c) for r in starts(block.row0, block.row1) for c in starts(block.col0, block.col1)]


def minority_share(label: np.ndarray, ignore_index: int) -> float:
    """Share of labelled pixels that are not of the block's most common class."""
    labelled = label[label != ignore_index]
    if labelled.size == 0:
        return 0.0
    counts = np.bincount(labelled.astype(np.int64))
    return float(1.0 - counts.max() / labelled.size)


def cut_chips(
    image: np.ndarray,
    label: np.ndarray,
    out_dir: str | Path,
    spec: ChipSpec,
    *,
    transform: Affine,
    crs: rasterio.crs.CRS | str | None,
    chip_size: int,
    stride: int | None = None,
    block_size: int | None = None,
    val_fraction: float = 0.2,
    max_ignored_fraction: float = 0.5,
    prefix: str = "chip",
) -> ChipSet:
    """Cut co-registered chips from a scene and its label and write a chip folder.

    Parameters
    ----------
    image
        ``(C, H, W)`` stored scene values (as in the source files; the spec's
        ``value_scale``/``value_offset`` convert them to reflectance).
    label
        ``(H, W)`` class ids on the same grid, ``spec.ignore_index`` where unknown.
    out_dir
        Folder to write ``images/``, ``masks/``, ``chips.yaml`` and ``splits.csv`` into.
    spec
        Describes bands, scaling and classes; written as ``chips.yaml`` with
        ``splits: splits.csv``.
    transform, crs
        Georeferencing of the scene grid; each chip gets its window's transform.
    chip_size
        Chip side in pixels.
    stride
        Step between chips in pixels; defaults to ``chip_size`` (no overlap).
    block_size
        Side of the split blocks in pixels; defaults to ``3 * chip_size``.
    val_fraction
        Fraction of blocks held out for validation.
    max_ignored_fraction
        Chips with a larger share of ``ignore_index`` mask pixels are skipped.

    Returns
    -------
    ChipSet
        The written chips, with their split and block.
    """
    if image.ndim != 3:
        raise ValueError(f"image must be (C, H, W), got shape {image.shape}")
    if label.shape != image.shape[1:]:
        raise ValueError(
            f"label is {label.shape} px but the image is {image.shape[1:]} px; "
            "both must be on the same grid (resample the label first)"
        )
    if image.shape[0] != len(spec.wavelengths_um):
        raise ValueError(f"image has {image.shape[0]} bands but the spec gives {len(spec.wavelengths_um)} wavelengths")
    height, width = label.shape
    if chip_size > min(height, width):
        raise ValueError(f"chip_size {chip_size} px exceeds the scene ({height} × {width} px)")
    stride = chip_size if stride is None else stride
    block_size = 3 * chip_size if block_size is None else block_size
    if block_size < chip_size:
        raise ValueError(f"block_size {block_size} px is smaller than chip_size {chip_size} px; no chip would fit")

    blocks = block_grid(height, width, block_size)
    scores = [minority_share(label[b.row0 : b.row1, b.col0 : b.col1], spec.ignore_index) for b in blocks]
    val_blocks = set(choose_validation_blocks(scores, val_fraction))

    root = Path(out_dir)
    image_dir, mask_dir = root / spec.images, root / spec.masks
    image_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)

    records = []
    skipped = 0
    for block_index, block in enumerate(blocks):
        split = "val" if block_index in val_blocks else "train"
        for row, col in chip_windows(block, chip_size, stride):
            chip_label = label[row : row + chip_size, col : col + chip_size]
            if np.mean(chip_label == spec.ignore_index) > max_ignored_fraction:
                skipped += 1
                continue
            name = f"{prefix}_{block.block_id}_{row:05d}_{col:05d}"
            window_transform = rasterio.windows.transform(Window(col, row, chip_size, chip_size), transform)
            _write_tif(image_dir / f"{name}.tif", image[:, row : row + chip_size, col : col + chip_size],
                       window_transform, crs, spec.nodata)
            _write_tif(mask_dir / f"{name}.tif", chip_label[np.newaxis], window_transform, crs, None)
            records.append(
                ChipRecord(name, image_dir / f"{name}.tif", mask_dir / f"{name}.tif", split, block.block_id)  # type: ignore[arg-type]
            )

    written_spec = spec.model_copy(update={"splits": "splits.csv"})
    write_chip_spec(written_spec, root)
    write_splits_file(records, root / "splits.csv")
    chips = ChipSet(spec=written_spec, records=tuple(records), root=root)
    logger.info(
        "cut %d chips (%s) of %d px from %d blocks of %d px into %s; skipped %d mostly unlabelled chips",
        len(records), chips.counts(), chip_size, len(blocks), block_size, root, skipped,
    )
    return chips


def _write_tif(path: Path, array: np.ndarray, transform: Affine, crs, nodata: float | None) -> None:
    profile = {
        "driver": "GTiff",
        "height": array.shape[1],
        "width": array.shape[2],
        "count": array.shape[0],
        "dtype": array.dtype,
        "transform": transform,
        "crs": crs,
        "compress": "deflate",
    }
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as sink:
        sink.write(array)


def split_by_position(chips: ChipSet, block_size_m: float, val_fraction: float = 0.2) -> ChipSet:
    """Assign chips of a georeferenced folder to train/val by the block their centre falls in.

    For folders that come without a split file. Blocks are squares of
    ``block_size_m`` metres on the chips' CRS, anchored at the origin; whole
    blocks are held out with :func:`choose_validation_blocks`.

    NOTE: chips that overlap across a block edge can still share pixels
    between splits; chips cut by :func:`cut_chips` never do.
    """
    if block_size_m <= 0:
        raise ValueError(f"block_size_m must be positive, got {block_size_m}")

    block_of: dict[str, tuple[int, int]] = {}
    for record in chips.records:
        with rasterio.open(record.image_path) as source:
            if source.crs is None:
                raise ValueError(
                    f"chip {record.image_path} has no CRS; a split by position needs georeferenced chips "
                    "(or give a splits file)"
                )
            left, bottom, right, top = source.bounds
        centre_x, centre_y = (left + right) / 2, (bottom + top) / 2
        block_of[record.name] = (int(np.floor(centre_y / block_size_m)), int(np.floor(centre_x / block_size_m)))

    block_keys = sorted(set(block_of.values()))
    index_of = {key: i for i, key in enumerate(block_keys)}
    val_blocks = set(choose_validation_blocks([0.0] * len(block_keys), val_fraction))

    records = []
    for record in chips.records:
        key = block_of[record.name]
        split = "val" if index_of[key] in val_blocks else "train"
        records.append(dataclasses.replace(record, split=split, block=f"y{key[0]}x{key[1]}"))
    return ChipSet(spec=chips.spec, records=tuple(records), root=chips.root)
