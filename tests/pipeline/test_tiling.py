"""Table tests of the tiling maths: patch sizes, tile grids, blend windows, block plans."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from pipeline.tiling import (
    BLEND_LEVELS,
    axis_origins,
    blend_ramp,
    blend_window,
    choose_patch_size,
    plan_blocks,
    tile_grid,
)


@pytest.mark.parametrize(
    ("sensor", "reference_gsd_m", "reference_patch", "scene_gsd_m", "expected"),
    [
        ("Sentinel-2 10 m", 10.0, 16, 10.0, 16),
        ("Sentinel-2 20 m bands", 10.0, 16, 20.0, 8),
        ("Gaofen-2 MSS 4 m", 10.0, 16, 4.0, 40),
        ("GF-1 WFV 16 m", 10.0, 16, 16.0, 10),
        ("GF-1 PMS 8 m", 10.0, 16, 8.0, 20),
        ("Landsat 30 m", 10.0, 16, 30.0, 5),
        ("half rounds up", 10.0, 16, 64.0, 4),
    ],
)
def test_patch_size_for_sensor(sensor, reference_gsd_m, reference_patch, scene_gsd_m, expected):
    assert choose_patch_size(reference_gsd_m, reference_patch, scene_gsd_m) == expected, sensor


def test_patch_size_tile_covers_training_footprint():
    # 16 tokens of p = 40 at 4 m cover 2560 m, the ground of 16 tokens of 16 px at 10 m.
    patch = choose_patch_size(10.0, 16, 4.0)
    assert 16 * patch == 640
    assert 16 * patch * 4.0 == 16 * 16 * 10.0


@pytest.mark.parametrize(
    ("scene_gsd_m", "expected", "message"),
    [
        (0.5, 64, "outside"),  # exact 320 px, clamped to max_patch
        (100.0, 4, "outside"),  # exact 1.6 px, clamped to min_patch
    ],
)
def test_patch_size_clamped_and_logged(scene_gsd_m, expected, message, caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline.tiling"):
        assert choose_patch_size(10.0, 16, scene_gsd_m) == expected
    assert message in caplog.text


def test_patch_size_choice_logged(caplog):
    with caplog.at_level(logging.INFO, logger="pipeline.tiling"):
        choose_patch_size(10.0, 16, 4.0)
    assert "patch size 40 px" in caplog.text


def test_patch_size_override_wins():
    assert choose_patch_size(10.0, 16, 4.0, override=16) == 16


@pytest.mark.parametrize(
    ("arguments", "keywords", "match"),
    [
        ((0.0, 16, 10.0), {}, "reference_gsd_m must be a positive"),
        ((10.0, 0, 10.0), {}, "reference_patch_size must be a positive"),
        ((10.0, 16, -4.0), {}, "scene_gsd_m must be a positive"),
        ((10.0, 16, float("nan")), {}, "scene_gsd_m must be a positive finite"),
        ((10.0, 16, 10.0), {"override": 100}, "override 100 is outside"),
        ((10.0, 16, 10.0), {"min_patch": 8, "max_patch": 4}, "range"),
    ],
)
def test_patch_size_rejects_bad_input(arguments, keywords, match):
    with pytest.raises(ValueError, match=match):
        choose_patch_size(*arguments, **keywords)


@pytest.mark.parametrize(
    ("size", "tile", "stride", "expected"),
    [
        (1, 256, 192, (0,)),
        (100, 256, 192, (0,)),
        (256, 256, 192, (0,)),
        (257, 256, 192, (0, 192)),
        (448, 256, 192, (0, 192)),
        (449, 256, 192, (0, 192, 384)),
        (2048, 256, 192, tuple(range(0, 1921, 192))),
        (2049, 256, 192, tuple(range(0, 1921, 192))),
        (2176, 256, 192, tuple(range(0, 1921, 192))),
        (2177, 256, 192, tuple(range(0, 2113, 192))),
        (1999, 256, 192, tuple(range(0, 1921, 192))),
        (512, 256, 256, (0, 256)),
        (513, 256, 256, (0, 256, 512)),
        (640, 640, 480, (0,)),
    ],
)
def test_axis_origins(size, tile, stride, expected):
    assert axis_origins(size, tile, stride) == expected


@pytest.mark.parametrize(
    ("height", "width", "tile", "overlap", "shape"),
    [
        (1, 1, 256, 64, (1, 1)),
        (100, 37, 256, 64, (1, 1)),
        (256, 256, 256, 64, (1, 1)),
        (257, 256, 256, 64, (2, 1)),
        (2048, 2048, 256, 64, (11, 11)),
        (4096, 4096, 256, 64, (21, 21)),
        (1999, 1999, 256, 64, (11, 11)),
        (300, 1000, 256, 0, (2, 4)),
        (640, 1281, 640, 160, (1, 3)),
    ],
)
def test_tile_grid_shape(height, width, tile, overlap, shape):
    grid = tile_grid(height, width, tile, overlap)
    assert grid.shape == shape
    assert len(grid) == shape[0] * shape[1]
    assert len(list(grid)) == len(grid)


@pytest.mark.parametrize(
    ("height", "width", "tile", "overlap"),
    [(1, 1, 32, 8), (31, 17, 32, 8), (64, 64, 32, 8), (65, 97, 32, 8), (150, 97, 32, 16), (90, 40, 32, 0)],
)
def test_tile_grid_covers_every_pixel(height, width, tile, overlap):
    grid = tile_grid(height, width, tile, overlap)
    coverage = np.zeros((height, width), dtype=int)
    for item in grid:
        coverage[item.y0: item.y0 + tile, item.x0: item.x0 + tile] += 1
    assert coverage.min() >= 1
    # No pixel lies under more than two tiles per axis.
    assert coverage.max() <= 4
    # The last tile row and column reach the far edges.
    assert grid.origins_y[-1] + tile >= height
    assert grid.origins_x[-1] + tile >= width


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        ((0, 10, 32, 8), "scene size must be at least 1 x 1"),
        ((10, 10, 0, 0), "tile size must be at least 1"),
        ((10, 10, 32, 17), "tile overlap 17 px is outside"),
        ((10, 10, 32, -1), "tile overlap -1 px is outside"),
    ],
)
def test_tile_grid_rejects_bad_input(arguments, match):
    with pytest.raises(ValueError, match=match):
        tile_grid(*arguments)


@pytest.mark.parametrize(("tile", "overlap"), [(256, 64), (32, 8), (32, 16), (16, 0), (640, 160)])
def test_blend_window_shape(tile, overlap):
    window = blend_window(tile, overlap)
    ramp = blend_ramp(tile, overlap)
    assert window.shape == (tile, tile)
    assert window.dtype == np.int64
    assert window.min() >= 1
    assert window.max() <= BLEND_LEVELS**2
    if 2 * overlap < tile:
        assert window.max() == BLEND_LEVELS**2
    assert np.array_equal(window, window.T)
    assert np.array_equal(ramp, ramp[::-1])
    # The weight rises monotonically over the overlap and is flat in between.
    assert np.all(np.diff(ramp[: overlap + 1]) >= 0)
    assert np.all(ramp[overlap: tile - overlap] == BLEND_LEVELS)


def test_blend_ramp_is_smooth():
    ramp = blend_ramp(256, 64).astype(float)
    # A raised cosine: no step larger than the steepest slope of the curve (pi/2 per overlap).
    assert np.abs(np.diff(ramp)).max() <= np.pi / 2 * BLEND_LEVELS / 64 + 1


def test_blend_window_rejects_wide_overlap():
    with pytest.raises(ValueError, match="overlap 20 px is outside"):
        blend_window(32, 20)


@pytest.mark.parametrize(
    ("height", "width", "tile", "overlap", "block", "chunk", "block_side"),
    [
        (150, 97, 32, 8, 64, 32, 64),
        (150, 97, 32, 8, 20, 16, 32),
        (2048, 2048, 256, 64, 1024, 512, 1024),
        (1030, 1030, 256, 64, 1024, 512, 1024),
        (4000, 3000, 640, 160, 512, 512, 1024),
        (1, 1, 256, 64, 1024, 512, 1024),
    ],
)
def test_block_plan_owns_each_tile_once(height, width, tile, overlap, block, chunk, block_side):
    grid = tile_grid(height, width, tile, overlap)
    plan = plan_blocks(grid, block, chunk)
    assert plan.block_px == block_side
    assert plan.block_px % chunk == 0
    assert plan.block_px >= tile

    owned = [(item.row, item.col) for b in plan for item in plan.tiles(b)]
    assert sorted(owned) == sorted((item.row, item.col) for item in grid)

    covered = np.zeros((height, width), dtype=int)
    for b in plan:
        covered[b.y0: b.y1, b.x0: b.x1] += 1
        y0, y1, x0, x1 = plan.footprint(b)
        assert (y0, x0) == (b.y0, b.x0)
        assert b.y1 <= y1 <= min(height, b.y1 + tile)
        assert b.x1 <= x1 <= min(width, b.x1 + tile)
        for item in plan.tiles(b):
            assert b.y0 <= item.y0 < b.y1
            assert b.x0 <= item.x0 < b.x1
    assert covered.min() == 1
    assert covered.max() == 1


def test_block_plan_overlaps_reach_neighbours_only():
    grid = tile_grid(150, 97, 32, 8)
    plan = plan_blocks(grid, 32, 32)
    for b in plan:
        y0, y1, x0, x1 = plan.footprint(b)
        for target in plan.spill_targets(b):
            assert target.row - b.row in (0, 1)
            assert target.col - b.col in (0, 1)
            assert target.y0 < y1
            assert target.x0 < x1
            assert b in plan.spill_sources(target)
        # Every block outside the footprint's reach is not a target.
        for other in plan:
            reaches = other.y0 < y1 and other.y1 > y0 and other.x0 < x1 and other.x1 > x0
            if other != b and reaches:
                assert other in plan.spill_targets(b)


@pytest.mark.parametrize(
    ("height", "width", "tile", "overlap", "block_px"),
    [(150, 97, 32, 8, 32), (64, 64, 32, 8, 64), (1030, 300, 256, 64, 1024), (2048, 2048, 256, 64, 1024)],
)
def test_spill_regions_cover_outside_once(height, width, tile, overlap, block_px):
    plan = plan_blocks(tile_grid(height, width, tile, overlap), block_px, block_px)
    for block in plan:
        y0, y1, x0, x1 = plan.footprint(block)
        outside = np.ones((y1 - y0, x1 - x0), dtype=np.int64)
        outside[: block.y1 - y0, : block.x1 - x0] = 0
        covered = np.zeros_like(outside)
        listed = []
        for (r0, r1, c0, c1), targets in plan.spill_regions(block):
            covered[r0 - y0: r1 - y0, c0 - x0: c1 - x0] += 1
            listed += targets
            # Each pixel of a region lies in one of the blocks it lists.
            inside = np.zeros_like(outside)
            for target in targets:
                inside[max(target.y0, r0) - y0: min(target.y1, r1) - y0,
                       max(target.x0, c0) - x0: min(target.x1, c1) - x0] += 1
            assert inside[r0 - y0: r1 - y0, c0 - x0: c1 - x0].min() == 1
        # The regions cover the footprint outside the block once, and name every target once.
        assert (covered == outside).all()
        assert sorted(t.block_id for t in listed) == sorted(t.block_id for t in plan.spill_targets(block))


@pytest.mark.parametrize(
    ("height", "width", "largest"),
    [(2048, 2048, (1216, 1216)), (4096, 4096, (1216, 1216)), (1030, 300, (1030, 300)), (100, 100, (100, 100))],
)
def test_largest_footprint(height, width, largest):
    plan = plan_blocks(tile_grid(height, width, 256, 64), 1024, 512)
    assert plan.largest_footprint == largest
    assert all(y1 - y0 <= largest[0] and x1 - x0 <= largest[1] for y0, y1, x0, x1 in map(plan.footprint, plan))


def test_row_pairs_order():
    plan = plan_blocks(tile_grid(150, 97, 32, 8), 32, 32)  # 5 x 4 blocks
    assert [(block.row, block.col) for block in plan.in_row_pairs()] == [
        (0, 0), (0, 1), (1, 0), (0, 2), (1, 1), (0, 3), (1, 2), (1, 3),
        (2, 0), (2, 1), (3, 0), (2, 2), (3, 1), (2, 3), (3, 2), (3, 3),
        (4, 0), (4, 1), (4, 2), (4, 3),
    ]


@pytest.mark.parametrize(("height", "width"), [(1, 1), (32, 97), (150, 32), (64, 64), (150, 97), (97, 150)])
def test_row_pairs_after_spill_sources(height, width):
    plan = plan_blocks(tile_grid(height, width, 32, 8), 32, 32)
    order = [block.block_id for block in plan.in_row_pairs()]
    assert sorted(order) == sorted(block.block_id for block in plan)
    for position, block_id in enumerate(order):
        block = next(block for block in plan if block.block_id == block_id)
        assert all(order.index(source.block_id) < position for source in plan.spill_sources(block))


def test_block_plan_empty_edge_block():
    # The last block row (1024..1030) owns no tile: tile 5 (960..1216) of the first block covers it.
    plan = plan_blocks(tile_grid(1030, 300, 256, 64), 1024, 512)
    last = plan.block(1, 0)
    assert last.tile_count == 0
    assert last in plan.spill_targets(plan.block(0, 0))


def test_block_index_out_of_range():
    plan = plan_blocks(tile_grid(100, 100, 32, 8), 64, 32)
    with pytest.raises(IndexError, match=r"block \(2, 0\) is outside the 2 x 2 block grid"):
        plan.block(2, 0)
