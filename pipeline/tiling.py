"""Tile grids, blend windows, block plans and the resolution-matched patch size.

Everything here is pure integer maths on pixel coordinates, so it is cheap to
test by tables and safe to call on the driver and on workers alike.

Conventions: coordinates are ``(row, column)`` pixel offsets from the scene's
upper-left pixel; ranges are half-open ``[start, stop)``. The tile grid is
anchored to the scene origin: tile ``(i, j)`` starts at ``(i * stride_px,
j * stride_px)`` whatever block it is processed in, which is what makes the
predictions independent of how a scene is split into blocks and workers.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Iterator

import numpy as np

logger = logging.getLogger(__name__)

BLEND_LEVELS = 256
"""Largest 1-D blend weight: window weights are integers in ``[1, BLEND_LEVELS]``."""


def choose_patch_size(
    reference_gsd_m: float,
    reference_patch_size: int,
    scene_gsd_m: float,
    *,
    override: int | None = None,
    min_patch: int = 4,
    max_patch: int = 64,
) -> int:
    """Choose the patch size (pixels) whose footprint on the ground matches the model's.

    ``p = round(reference_patch_size * reference_gsd_m / scene_gsd_m)``, with
    halves rounded up, clamped to ``[min_patch, max_patch]``. A Sentinel-2
    scene at 10 m with a 10 m / p16 model card gets p = 16, Gaofen-2 MSS at
    4 m gets 40 and GF-1 WFV at 16 m gets 10.

    Parameters
    ----------
    reference_gsd_m
        GSD the model was trained at, in metres.
    reference_patch_size
        Patch size the model was trained with, in pixels.
    scene_gsd_m
        GSD of the scene (the input cube's grid), in metres.
    override
        Patch size to use instead of the computed one (a job setting); it is
        still checked against ``[min_patch, max_patch]``.
    min_patch, max_patch
        Range of accepted patch sizes, in pixels.

    Returns
    -------
    int
        The patch size in pixels.

    Raises
    ------
    ValueError
        If a GSD or patch size is not positive, the range is empty, or the
        override lies outside the range.
    """
    for name, value in (
        ("reference_gsd_m", reference_gsd_m),
        ("reference_patch_size", reference_patch_size),
        ("scene_gsd_m", scene_gsd_m),
    ):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    if not 1 <= min_patch <= max_patch:
        raise ValueError(
            f"patch size range [{min_patch}, {max_patch}] is empty or below 1; "
            "pass 1 <= min_patch <= max_patch"
        )

    if override is not None:
        if not (isinstance(override, int) and min_patch <= override <= max_patch):
            raise ValueError(
                f"patch size override {override!r} is outside [{min_patch}, {max_patch}] px; "
                "pass an integer in that range or widen min_patch/max_patch"
            )
        logger.info("patch size %d px set by override", override)
        return override

    exact = reference_patch_size * reference_gsd_m / scene_gsd_m
    patch = int(math.floor(exact + 0.5))
    clamped = min(max(patch, min_patch), max_patch)
    if clamped != patch:
        logger.warning(
            "patch size %.2f px for a %.3g m scene (model: p%d at %.3g m) is outside "
            "[%d, %d] px; using %d px, so a tile covers %.0f%% of the model's training footprint",
            exact, scene_gsd_m, reference_patch_size, reference_gsd_m,
            min_patch, max_patch, clamped, 100.0 * clamped / exact,
        )
    else:
        logger.info(
            "patch size %d px for a %.3g m scene (model: p%d at %.3g m)",
            clamped, scene_gsd_m, reference_patch_size, reference_gsd_m,
        )
    return clamped


def axis_origins(size_px: int, tile_px: int, stride_px: int) -> tuple[int, ...]:
    """Return the tile starts along one axis: ``0, stride, 2 * stride, ...``.

    The last tile is the first one that reaches the far edge. It extends past
    the edge, and is padded, unless the tiles fit the size exactly. A size of
    at most one tile gives the single origin 0.
    """
    if size_px < 1:
        raise ValueError(f"axis size must be at least 1 px, got {size_px}")
    if size_px <= tile_px:
        return (0,)
    count = 1 + -(-(size_px - tile_px) // stride_px)
    return tuple(i * stride_px for i in range(count))


@dataclasses.dataclass(frozen=True)
class Tile:
    """One tile of a :class:`TileGrid`: grid index and pixel origin in the scene."""

    row: int
    col: int
    y0: int
    x0: int


@dataclasses.dataclass(frozen=True)
class TileGrid:
    """Overlapping square tiles anchored to the scene's upper-left pixel.

    Attributes
    ----------
    height, width
        Scene size in pixels.
    tile_px
        Tile side in pixels.
    overlap_px
        Pixels shared by neighbouring tiles; the stride is ``tile_px - overlap_px``.
    """

    height: int
    width: int
    tile_px: int
    overlap_px: int

    @property
    def stride_px(self) -> int:
        """Distance between neighbouring tile origins, in pixels."""
        return self.tile_px - self.overlap_px

    # Cached: the driver's block planning reads them hundreds of times per scene.
    @functools.cached_property
    def origins_y(self) -> tuple[int, ...]:
        """Tile row starts in pixels."""
        return axis_origins(self.height, self.tile_px, self.stride_px)

    @functools.cached_property
    def origins_x(self) -> tuple[int, ...]:
        """Tile column starts in pixels."""
        return axis_origins(self.width, self.tile_px, self.stride_px)

    @property
    def shape(self) -> tuple[int, int]:
        """Number of tile rows and columns."""
        return len(self.origins_y), len(self.origins_x)

    def __len__(self) -> int:
        rows, cols = self.shape
        return rows * cols

    def __iter__(self) -> Iterator[Tile]:
        """Yield every tile in row-major order."""
        for i, y0 in enumerate(self.origins_y):
            for j, x0 in enumerate(self.origins_x):
                yield Tile(i, j, y0, x0)


def tile_grid(height: int, width: int, tile_px: int, overlap_px: int) -> TileGrid:
    """Build the tile grid of a ``height x width`` scene.

    Parameters
    ----------
    height, width
        Scene size in pixels, at least 1.
    tile_px
        Tile side in pixels, at least 1.
    overlap_px
        Overlap of neighbouring tiles in pixels, from 0 to ``tile_px // 2``:
        more would let three tiles overlap along one axis.

    Returns
    -------
    TileGrid
        The grid; iterating it yields :class:`Tile` records in row-major order.

    Raises
    ------
    ValueError
        If a size is below 1 or the overlap is outside ``[0, tile_px // 2]``.
    """
    if height < 1 or width < 1:
        raise ValueError(f"scene size must be at least 1 x 1 px, got {height} x {width}")
    if tile_px < 1:
        raise ValueError(f"tile size must be at least 1 px, got {tile_px}")
    if not 0 <= overlap_px <= tile_px // 2:
        raise ValueError(
            f"tile overlap {overlap_px} px is outside [0, {tile_px // 2}] for {tile_px} px tiles; "
            "use at most half a tile"
        )
    return TileGrid(height, width, tile_px, overlap_px)


def blend_ramp(tile_px: int, overlap_px: int, levels: int = BLEND_LEVELS) -> np.ndarray:
    """Return the 1-D blend weights of a tile: integers in ``[1, levels]``, shape ``(tile_px,)``.

    The weight rises as a raised cosine over the first ``overlap_px`` pixels,
    is ``levels`` in the middle and falls symmetrically over the last
    ``overlap_px``. Integer weights keep the blended sums exact, so the result
    does not depend on the order in which tiles are added.
    """
    if overlap_px < 0 or 2 * overlap_px > tile_px:
        raise ValueError(f"overlap {overlap_px} px is outside [0, {tile_px // 2}] for {tile_px} px tiles")
    ramp = np.full(tile_px, levels, dtype=np.int64)
    if overlap_px:
        position = (np.arange(overlap_px) + 0.5) / overlap_px
        rising = 1 + np.rint((levels - 1) * np.sin(0.5 * np.pi * position) ** 2).astype(np.int64)
        ramp[:overlap_px] = rising
        ramp[tile_px - overlap_px:] = rising[::-1]
    return ramp


def blend_window(tile_px: int, overlap_px: int, levels: int = BLEND_LEVELS) -> np.ndarray:
    """Return the 2-D blend window of a tile, int64 of shape ``(tile_px, tile_px)``.

    The outer product of :func:`blend_ramp` with itself: smooth, strictly
    positive, at most ``levels ** 2``.
    """
    ramp = blend_ramp(tile_px, overlap_px, levels)
    return np.outer(ramp, ramp)


@dataclasses.dataclass(frozen=True)
class Block:
    """One block of a :class:`BlockPlan`: the output region one task writes.

    Attributes
    ----------
    row, col
        Block index in the block grid.
    y0, y1, x0, x1
        Output region in scene pixels, half-open.
    tile_rows, tile_cols
        Ranges of tile indices whose origin lies in the block: the tiles this
        block runs through the model.
    """

    row: int
    col: int
    y0: int
    y1: int
    x0: int
    x1: int
    tile_rows: range
    tile_cols: range

    @property
    def block_id(self) -> str:
        """Stable name of the block, e.g. ``"r0003c0012"``."""
        return f"r{self.row:04d}c{self.col:04d}"

    @property
    def region(self) -> tuple[int, int, int, int]:
        """Output region ``(y0, y1, x0, x1)`` in scene pixels."""
        return self.y0, self.y1, self.x0, self.x1

    @property
    def tile_count(self) -> int:
        """Number of tiles the block owns."""
        return len(self.tile_rows) * len(self.tile_cols)


@dataclasses.dataclass(frozen=True)
class BlockPlan:
    """Split of a scene into blocks, and of its tiles among them.

    Each tile belongs to the block that contains its origin and is run through
    the model exactly once. Its blended output also reaches at most one tile
    beyond that block, into the neighbours to the right, below and diagonally
    below-right (the block side is at least one tile), which :meth:`spill_targets`
    names and :meth:`spill_regions` cuts into a part to the right and a strip below.
    """

    grid: TileGrid
    block_px: int

    @property
    def shape(self) -> tuple[int, int]:
        """Number of block rows and columns."""
        return -(-self.grid.height // self.block_px), -(-self.grid.width // self.block_px)

    def _tile_range(self, origins: tuple[int, ...], start: int, stop: int) -> range:
        stride = self.grid.stride_px
        first = -(-start // stride)
        last = min(-(-stop // stride), len(origins))
        return range(first, max(first, last))

    def block(self, row: int, col: int) -> Block:
        """Return block ``(row, col)``."""
        rows, cols = self.shape
        if not (0 <= row < rows and 0 <= col < cols):
            raise IndexError(f"block ({row}, {col}) is outside the {rows} x {cols} block grid")
        y0, x0 = row * self.block_px, col * self.block_px
        y1 = min(y0 + self.block_px, self.grid.height)
        x1 = min(x0 + self.block_px, self.grid.width)
        return Block(
            row, col, y0, y1, x0, x1,
            self._tile_range(self.grid.origins_y, y0, y1),
            self._tile_range(self.grid.origins_x, x0, x1),
        )

    def __iter__(self) -> Iterator[Block]:
        """Yield every block in row-major order."""
        rows, cols = self.shape
        for row in range(rows):
            for col in range(cols):
                yield self.block(row, col)

    def in_row_pairs(self) -> list[Block]:
        """Return every block, rows taken in pairs and the lower row one block behind the upper one.

        ``(0, 0), (0, 1), (1, 0), (0, 2), (1, 1), ...``, the order in which
        the inference stage submits blocks. Each block comes after the blocks
        whose tiles spill into it, so it can be written as soon as it is
        predicted. Two blocks next to each other in this order, as two task
        threads take them, need nothing of each other except at the start of
        a pair of rows. In row-major order the second of two such blocks
        waits for the first's overlap before it can be written, and holds its
        blend sums meanwhile. The strips below the upper row are taken by the
        lower row a block later, so only those below the lower row wait for
        the next pair.
        """
        rows, cols = self.shape
        order = []
        for top in range(0, rows, 2):
            for col in range(cols + 1):
                if col < cols:
                    order.append(self.block(top, col))
                if col > 0 and top + 1 < rows:
                    order.append(self.block(top + 1, col - 1))
        return order

    def __len__(self) -> int:
        rows, cols = self.shape
        return rows * cols

    def footprint(self, block: Block) -> tuple[int, int, int, int]:
        """Return ``(y0, y1, x0, x1)``: the block's region plus the reach of its tiles.

        A block task reads this region from the cube and blends into it. It
        is the block itself (for its nodata mask) plus the part of the scene
        that the block's own tiles cover beyond its lower and right edges, a
        halo narrower than one tile.
        """
        tile = self.grid.tile_px
        y1, x1 = block.y1, block.x1
        if block.tile_rows and block.tile_cols:
            y1 = max(y1, min(self.grid.origins_y[block.tile_rows[-1]] + tile, self.grid.height))
            x1 = max(x1, min(self.grid.origins_x[block.tile_cols[-1]] + tile, self.grid.width))
        return block.y0, y1, block.x0, x1

    @functools.cached_property
    def largest_footprint(self) -> tuple[int, int]:
        """Return the largest height and width of any block's :meth:`footprint`."""
        footprints = [self.footprint(block) for block in self]
        return max(y1 - y0 for y0, y1, _, _ in footprints), max(x1 - x0 for _, _, x0, x1 in footprints)

    def tiles(self, block: Block) -> list[Tile]:
        """Return the tiles the block owns, in row-major order."""
        stride = self.grid.stride_px
        return [
            Tile(i, j, i * stride, j * stride)
            for i in block.tile_rows
            for j in block.tile_cols
        ]

    def spill_targets(self, block: Block) -> list[Block]:
        """Return the neighbouring blocks that the block's tiles reach into."""
        _, y1, _, x1 = self.footprint(block)
        rows, cols = self.shape
        targets = []
        for d_row, d_col in ((0, 1), (1, 0), (1, 1)):
            row, col = block.row + d_row, block.col + d_col
            if row >= rows or col >= cols:
                continue
            neighbour = self.block(row, col)
            reaches_y = d_row == 0 or y1 > neighbour.y0
            reaches_x = d_col == 0 or x1 > neighbour.x0
            if reaches_y and reaches_x:
                targets.append(neighbour)
        return targets

    def spill_regions(self, block: Block) -> list[tuple[tuple[int, int, int, int], list[Block]]]:
        """Return the parts ``(y0, y1, x0, x1)`` of the block's footprint outside it, each with the blocks it reaches.

        The part to the right reaches the neighbour to the right. The strip
        below, with the corner, reaches the neighbour below and the diagonal
        one, so one copy of it serves both.
        """
        _, y1, _, x1 = self.footprint(block)
        targets = self.spill_targets(block)
        right = [target for target in targets if target.row == block.row]
        below = [target for target in targets if target.row != block.row]
        regions = []
        if right:
            regions.append(((block.y0, block.y1, block.x1, x1), right))
        if below:
            regions.append(((block.y1, y1, block.x0, x1), below))
        return regions

    def spill_sources(self, block: Block) -> list[Block]:
        """Return the neighbouring blocks whose tiles reach into ``block``."""
        sources = []
        for d_row, d_col in ((-1, -1), (-1, 0), (0, -1)):
            row, col = block.row + d_row, block.col + d_col
            if row < 0 or col < 0:
                continue
            neighbour = self.block(row, col)
            if any(t.row == block.row and t.col == block.col for t in self.spill_targets(neighbour)):
                sources.append(neighbour)
        return sources


def plan_blocks(grid: TileGrid, block_px: int, chunk_px: int) -> BlockPlan:
    """Split a tile grid into blocks of about ``block_px`` pixels.

    The block side is raised to at least one tile (so a tile reaches only the
    next block) and rounded up to a multiple of ``chunk_px`` (so every block
    writes whole chunks of the output store).

    Parameters
    ----------
    grid
        The scene's tile grid.
    block_px
        Requested block side in pixels.
    chunk_px
        Chunk side of the output store in pixels.

    Returns
    -------
    BlockPlan
    """
    if block_px < 1 or chunk_px < 1:
        raise ValueError(f"block and chunk sizes must be at least 1 px, got {block_px} and {chunk_px}")
    side = max(block_px, grid.tile_px)
    side = -(-side // chunk_px) * chunk_px
    if side != block_px:
        logger.info(
            "block side %d px raised to %d px (at least one %d px tile, a multiple of the %d px chunks)",
            block_px, side, grid.tile_px, chunk_px,
        )
    return BlockPlan(grid, side)
