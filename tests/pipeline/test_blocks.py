"""Quantization, blending and output arithmetic of the block tasks."""

from pathlib import Path

import numpy as np
import pytest
import torch

import pipeline.model
from pipeline import blend_kernels, layout, scratch
from pipeline.blocks import LOGIT_LIMIT, LOGIT_SCALE, BlendAccumulator, _cut_tile, _TileInput
from pipeline.model import load_card
from pipeline.tiling import BLEND_LEVELS, Tile, blend_window

CARDS_DIR = Path(pipeline.model.__file__).parent / "cards"


def quantized(logits: np.ndarray, name: str = "test") -> np.ndarray:
    """Blend one tile with weight 1 everywhere: the sums are its quantized logits."""
    classes, height, width = logits.shape
    accumulator = BlendAccumulator((0, height, 0, width), np.ones((height, width), np.int32), name)
    accumulator.add(Tile(0, 0, 0, 0), np.asarray(logits, dtype=np.float32), (height, width))
    return accumulator.logit_sum


def test_quantize_returns_int32_steps():
    logits = np.array([[[0.0, 1.0]], [[0.5, -1.0]]])

    sums = quantized(logits)

    assert sums.dtype == np.int32
    # Each pixel's largest logit becomes 0: [[-0.5, 0]], [[0, -2]] in steps of 1 / LOGIT_SCALE.
    assert sums.tolist() == [[[-LOGIT_SCALE // 2, 0]], [[0, -2 * LOGIT_SCALE]]]


def test_shifting_keeps_the_softmax():
    logits = np.random.default_rng(0).normal(size=(5, 8, 8)).astype(np.float32) * 3

    shifted = quantized(logits).astype(np.float32) / LOGIT_SCALE

    assert torch.allclose(torch.softmax(torch.from_numpy(shifted), dim=0),
                          torch.softmax(torch.from_numpy(logits), dim=0), atol=2e-3)


def test_quantization_rounds_half_to_even_like_torch():
    rng = np.random.default_rng(1)
    logits = np.round(rng.normal(size=(4, 16, 16)) * 512) / 512  # many exact halves of a step
    logits = logits.astype(np.float32)

    expected = torch.from_numpy(logits.copy())
    expected = (expected - expected.amax(dim=0)).clamp(min=-LOGIT_LIMIT).mul(LOGIT_SCALE).round().to(torch.int32)

    assert np.array_equal(quantized(logits), expected.numpy())


def test_far_below_the_top_is_clamped():
    sums = quantized(np.array([[[100.0]], [[0.0]], [[-np.inf]]]))

    assert sums[:, 0, 0].tolist() == [0, -LOGIT_LIMIT * LOGIT_SCALE, -LOGIT_LIMIT * LOGIT_SCALE]


def test_single_class_is_clamped_on_both_sides():
    sums = quantized(np.array([[[-1e6, -3.25, 2.5, 1e6]]]))

    assert sums[0, 0].tolist() == [-LOGIT_LIMIT * LOGIT_SCALE, -832, 640, LOGIT_LIMIT * LOGIT_SCALE]


@pytest.mark.parametrize(("value", "message"), [(np.nan, "NaN logits"), (np.inf, "infinite logits")])
def test_non_finite_logits_name_the_model(value, message):
    logits = np.zeros((3, 2, 2))
    logits[1, 0, 1] = value

    with pytest.raises(FloatingPointError, match=f"'broken-card' returned {message}"):
        quantized(logits, "broken-card")


def test_nan_single_class_logits_name_the_model():
    with pytest.raises(FloatingPointError, match="'broken-card' returned NaN"):
        quantized(np.array([[[np.nan]]]), "broken-card")


def test_largest_blend_sum_fits_in_int32():
    # Four tiles at most cover a pixel, each at the largest weight and logit.
    largest_term = LOGIT_LIMIT * LOGIT_SCALE * BLEND_LEVELS**2
    assert 4 * largest_term <= np.iinfo(np.int32).max


def test_tiles_add_weighted_where_they_overlap():
    window = blend_window(8, 2).astype(np.int32)
    accumulator = BlendAccumulator((0, 8, 0, 14), window, "test")
    first = np.full((1, 8, 8), 1.0, np.float32)
    second = np.full((1, 8, 8), -2.0, np.float32)

    accumulator.add(Tile(0, 0, 0, 0), first, (8, 14))
    accumulator.add(Tile(0, 1, 0, 6), second, (8, 14))

    expected_weights = np.zeros((8, 14), np.int64)
    expected_weights[:, :8] += window
    expected_weights[:, 6:] += window
    expected_sums = np.zeros((8, 14), np.int64)
    expected_sums[:, :8] += LOGIT_SCALE * window
    expected_sums[:, 6:] -= 2 * LOGIT_SCALE * window
    assert np.array_equal(accumulator.weight_sum, expected_weights)
    assert np.array_equal(accumulator.logit_sum[0], expected_sums)


def test_tile_past_scene_edge_is_cropped():
    accumulator = BlendAccumulator((0, 5, 0, 6), np.ones((4, 4), np.int32), "test")

    accumulator.add(Tile(1, 1, 3, 4), np.ones((2, 4, 4), np.float32), (5, 6))

    assert accumulator.weight_sum.sum() == 2 * 2
    assert np.array_equal(accumulator.weight_sum[3:, 4:], np.ones((2, 2)))


@pytest.fixture
def garbage_buffers(monkeypatch):
    """Make the sums start as garbage, as a reused buffer can, instead of the zeros fresh memory often has."""

    def empty(shape, dtype, capacity=0):
        return np.full(shape, 12345, dtype)

    monkeypatch.setattr(scratch.BLOCK_ARRAYS, "empty", empty)


@pytest.mark.parametrize("seed", range(4))
def test_sums_independent_of_tile_order_and_gaps(garbage_buffers, seed):
    # A 3 x 3 grid of 16 px tiles at stride 12 over a 40 x 40 footprint, some
    # tiles left out (as nodata tiles are) and the rest added in random order.
    rng = np.random.default_rng(seed)
    window = blend_window(16, 4).astype(np.int32)
    tiles = [Tile(row, col, 12 * row, 12 * col) for row in range(3) for col in range(3)]
    added_tiles = [tile for tile in tiles if rng.random() < 0.7]
    logits = {tile: rng.normal(size=(3, 16, 16)).astype(np.float32) * 6 for tile in added_tiles}

    expected_logits = np.zeros((3, 40, 40), np.int64)
    expected_weights = np.zeros((40, 40), np.int64)
    for tile in added_tiles:
        alone = BlendAccumulator((0, 40, 0, 40), window, "test")
        alone.add(tile, logits[tile], (40, 40))
        expected_logits += alone.logit_sum
        expected_weights += alone.weight_sum

    accumulator = BlendAccumulator((0, 40, 0, 40), window, "test")
    for index in rng.permutation(len(added_tiles)):
        accumulator.add(added_tiles[index], logits[added_tiles[index]], (40, 40))

    assert np.array_equal(accumulator.weight_sum, expected_weights)
    assert np.array_equal(accumulator.logit_sum, expected_logits)
    uncovered = expected_weights == 0
    assert np.all(accumulator.logit_sum[:, uncovered] == 0)


def test_sums_read_between_tiles_stay_exact(garbage_buffers):
    # Reading the sums zeroes what no tile wrote; later tiles must add to those zeros.
    window = np.ones((4, 4), np.int32)
    accumulator = BlendAccumulator((0, 4, 0, 8), window, "test")
    accumulator.add(Tile(0, 0, 0, 0), np.ones((1, 4, 4), np.float32), (4, 8))
    assert accumulator.weight_sum[:, 4:].sum() == 0

    accumulator.add(Tile(0, 1, 0, 2), np.ones((1, 4, 4), np.float32), (4, 8))

    assert accumulator.weight_sum[0].tolist() == [1, 1, 2, 2, 1, 1, 0, 0]
    assert accumulator.logit_sum[0, 0].tolist() == [LOGIT_SCALE * value for value in [1, 1, 2, 2, 1, 1, 0, 0]]


def _channels_last(logits: np.ndarray) -> np.ndarray:
    """Return ``logits`` (classes, y, x) as a view of an array stored (y, x, classes), as a pixel shuffle leaves it."""
    return np.ascontiguousarray(logits.transpose(1, 2, 0)).transpose(2, 0, 1)


@pytest.mark.parametrize("classes", [1, 6])
def test_logit_layouts_give_same_sums(classes):
    rng = np.random.default_rng(4)
    window = blend_window(16, 4).astype(np.int32)
    tiles = [(Tile(0, 0, 0, 0), (0, 0)), (Tile(0, 1, 0, 12), (0, 12)), (Tile(1, 1, 12, 12), (12, 12))]
    logits = [rng.normal(size=(classes, 16, 16)).astype(np.float32) * 8 for _ in tiles]
    layouts = {
        "C order": lambda values: values,
        "channels last": _channels_last,
        "Fortran order": np.asfortranarray,
        "every other column": lambda values: np.repeat(values, 2, axis=2)[:, :, ::2],
    }
    results = {}
    for name, layout_of in layouts.items():
        # The scene ends 4 px before the last tiles' far edges, so they are cropped.
        accumulator = BlendAccumulator((0, 24, 0, 24), window, "test")
        for (tile, _), values in zip(tiles, logits):
            accumulator.add(tile, layout_of(values), (24, 24))
        results[name] = (accumulator.logit_sum, accumulator.weight_sum)

    # With one class both layouts are the same bytes.
    assert _channels_last(logits[0]).flags.c_contiguous == (classes == 1)
    for name, (logit_sum, weight_sum) in results.items():
        assert np.array_equal(logit_sum, results["C order"][0]), name
        assert np.array_equal(weight_sum, results["C order"][1]), name


@pytest.mark.parametrize(("value", "message"), [(np.nan, "NaN logits"), (np.inf, "infinite logits")])
def test_channels_last_non_finite_logits_rejected(value, message):
    logits = np.zeros((3, 4, 4), np.float32)
    logits[2, 3, 1] = value
    accumulator = BlendAccumulator((0, 4, 0, 4), np.ones((4, 4), np.int32), "broken-card")

    with pytest.raises(FloatingPointError, match=f"'broken-card' returned {message}"):
        accumulator.add(Tile(0, 0, 0, 0), _channels_last(logits), (4, 4))


def test_cut_tile_nodata_and_edges():
    rng = np.random.default_rng(3)
    data = rng.integers(-9999, 10000, size=(3, 7, 9)).astype(np.int16)
    nodata = rng.random((7, 9)) < 0.2
    out = np.full((3, 4, 4), np.nan, np.float32)

    # The block starts at (10, 20); the tile at (14, 25) has 3 rows and 4 columns inside the scene.
    _cut_tile(data, nodata, Tile(0, 0, 14, 25), (10, 20), out)

    expected = np.multiply(data[:, 4:7, 5:9], np.float32(layout.REFLECTANCE_SCALE), dtype=np.float32)
    expected[:, nodata[4:7, 5:9]] = 0
    assert np.array_equal(out[:, :3], expected)
    assert np.array_equal(out[:, 3], expected[:, 2])  # the last row, mirrored


@pytest.mark.parametrize("height, width", [(1, 1), (1, 8), (3, 2), (5, 7), (8, 3)])
def test_cut_tile_pads_like_numpy_symmetric(height, width):
    rng = np.random.default_rng(height * 10 + width)
    data = rng.integers(0, 10000, size=(2, height, width)).astype(np.int16)
    nodata = np.zeros((height, width), bool)
    out = np.full((2, 8, 8), np.nan, np.float32)

    # An 8 px tile over a scene of height x width px: the padding can be wider than the scene.
    _cut_tile(data, nodata, Tile(0, 0, 0, 0), (0, 0), out)

    reflectance = np.multiply(data, np.float32(layout.REFLECTANCE_SCALE), dtype=np.float32)
    expected = np.pad(reflectance, ((0, 0), (0, 8 - height), (0, 8 - width)), mode="symmetric")
    assert np.array_equal(out, expected)


def test_folded_conversion_matches_prepare_input():
    card = load_card(CARDS_DIR / "demo_cloud_tiny_seeded.yaml")
    waves = [0.443, 0.49, 0.56, 0.665, 0.842, 1.61, 2.19]
    rng = np.random.default_rng(5)
    data = rng.integers(-500, 12000, size=(len(waves), 20, 20)).astype(np.int16)
    nodata = rng.random((20, 20)) < 0.1
    tile_input = _TileInput.for_card(card, waves)
    folded = np.empty((len(waves), 16, 16), np.float32)
    reflectance = np.empty_like(folded)

    _cut_tile(data, nodata, Tile(0, 0, 4, 6), (0, 0), folded, tile_input)
    _cut_tile(data, nodata, Tile(0, 0, 4, 6), (0, 0), reflectance)

    assert tile_input.prepared
    prepared = card.prepare_input(torch.from_numpy(reflectance[None]), waves)[0].numpy()
    assert np.array_equal(folded, prepared)
    # Nodata pixels are the card's conversion of reflectance 0, not 0.
    # 16 rows and 14 columns lie inside the data, and the rest is mirrored.
    inside = folded[:, :, :14]
    assert np.all(inside[:, nodata[4:20, 6:20]] != 0)


def test_clipped_scaling_left_to_prepare_input():
    card = load_card(CARDS_DIR / "tiny_landcover_seeded.yaml")  # dofa-8bit: TCI curve and clipping

    tile_input = _TileInput.for_card(card, [0.49, 0.56, 0.665])

    assert not tile_input.prepared
    assert np.array_equal(tile_input.gain, np.full(3, layout.REFLECTANCE_SCALE, np.float32))


def test_conversion_band_count_mismatch_rejected():
    class WrongBands:
        name = "wrong-bands"

        def stored_input_transform(self, wavelengths_um, stored_scale):
            from pipeline.model.scaling import StoredInputTransform

            return StoredInputTransform((1.0,) * 2, (0.0,) * 2, (1.0,) * 2)

    with pytest.raises(ValueError, match="'wrong-bands' states its input conversion for 2 bands, but the model gets 3"):
        _TileInput.for_card(WrongBands(), [0.49, 0.56, 0.665])


def _numpy_outputs(logit_sum, weight_sum, nodata):
    """The land-cover outputs computed with numpy, step by step, as reference."""
    logits = (logit_sum / (np.maximum(weight_sum, 1) * float(LOGIT_SCALE))).astype(np.float32)
    top = logits.max(axis=0)
    exponentials = np.exp(logits - top)
    inverse = np.float32(1) / exponentials.sum(axis=0)
    probabilities = np.rint(exponentials * inverse * np.float32(layout.PROBABILITY_SCALE)).astype(np.uint8)
    probabilities[:, nodata] = 255
    labels = np.where(nodata, 255, logits.argmax(axis=0)).astype(np.uint8)
    confidence = np.where(nodata, 255, np.rint(inverse * np.float32(100))).astype(np.uint8)
    return probabilities, labels, confidence


def test_softmax_kernels_match_numpy():
    rng = np.random.default_rng(5)
    weight_sum = rng.integers(1, BLEND_LEVELS**2, size=(30, 40)).astype(np.int32)
    logit_sum = (rng.integers(-16 * LOGIT_SCALE, 1, size=(6, 30, 40)) * weight_sum).astype(np.int32)
    logit_sum[2, :5] = logit_sum[4, :5]  # ties go to the first class
    nodata = rng.random((30, 40)) < 0.1

    shifted = np.empty(logit_sum.shape, np.float32)
    labels = np.empty((30, 40), np.uint8)
    blend_kernels.shift_by_top(logit_sum, weight_sum, LOGIT_SCALE, shifted, labels)
    np.exp(shifted, out=shifted)
    probabilities = np.empty(logit_sum.shape, np.uint8)
    confidence = np.empty((30, 40), np.uint8)
    blend_kernels.softmax_outputs(shifted, nodata, 255, layout.PROBABILITY_SCALE, probabilities, labels, confidence)

    expected = _numpy_outputs(logit_sum, weight_sum, nodata)
    assert np.array_equal(probabilities, expected[0])
    assert np.array_equal(labels, expected[1])
    assert np.array_equal(confidence, expected[2])


def test_label_confidence_matches_the_full_softmax_outputs():
    rng = np.random.default_rng(7)
    exponentials = np.exp(-rng.random((5, 20, 30), dtype=np.float32) * 8)
    exponentials[2] = 1
    nodata = rng.random((20, 30)) < 0.2
    labels = np.full((20, 30), 2, np.uint8)
    probabilities = np.empty((5, 20, 30), np.uint8)
    confidence = np.empty((20, 30), np.uint8)
    blend_kernels.softmax_outputs(exponentials, nodata, 255, layout.PROBABILITY_SCALE, probabilities, labels,
                                  confidence)

    only_labels = np.full((20, 30), 2, np.uint8)
    only_confidence = np.empty((20, 30), np.uint8)
    blend_kernels.label_confidence(exponentials, nodata, 255, only_labels, only_confidence)

    assert np.array_equal(only_labels, labels)
    assert np.array_equal(only_confidence, confidence)
    assert (only_labels[nodata] == 255).all()


def test_class_percent_is_the_softmax_of_one_class():
    logit_sum = np.array([[[0]], [[-LOGIT_SCALE]]], np.int32)  # logits 0 and -1
    shifted = np.empty((2, 1, 1), np.float32)
    labels = np.empty((1, 1), np.uint8)
    blend_kernels.shift_by_top(logit_sum, np.ones((1, 1), np.int32), LOGIT_SCALE, shifted, labels)
    np.exp(shifted, out=shifted)
    percent = np.empty((1, 1), np.uint8)

    blend_kernels.class_percent(shifted, np.zeros((1, 1), bool), 1, 255, percent)

    assert labels[0, 0] == 0
    assert percent[0, 0] == round(100 / (1 + np.e))


def test_loops_compile_without_a_cache_folder(monkeypatch):
    import numba.core.caching

    monkeypatch.setattr(numba.core.caching.CacheImpl, "_locator_classes", [])

    def add_one(values):
        return values + 1

    compiled = blend_kernels.compile_loop(add_one)

    assert compiled(np.arange(3)).tolist() == [1, 2, 3]


@pytest.mark.parametrize("task, classes", [("landcover", 6), ("cloud", 1), ("cloud", 3)])
def test_outputs_of_parts_equal_merged_sums(task, classes):
    """Merging the own sums and the neighbours' overlaps band by band gives the same bytes as one merged part."""
    import types

    from pipeline.blocks import Overlap, _output_arrays
    from pipeline.tiling import Block

    rng = np.random.default_rng(3)
    block = Block(1, 1, 100, 170, 200, 290, range(0), range(0))
    height, width = block.y1 - block.y0, block.x1 - block.x0
    # The block's own sums reach past it; the neighbours' overlaps cover its top and left.
    own = Overlap(100, 190, 200, 300, rng.integers(-4000, 1, (classes, 90, 100), dtype=np.int32),
                  rng.integers(1, 30, (90, 100), dtype=np.int32))
    above = Overlap(100, 140, 200, 290, rng.integers(-4000, 1, (classes, 40, 90), dtype=np.int32),
                    rng.integers(0, 30, (40, 90), dtype=np.int32))
    left = Overlap(100, 170, 200, 230, rng.integers(-4000, 1, (classes, 70, 30), dtype=np.int32),
                   rng.integers(0, 30, (70, 30), dtype=np.int32))
    own_region = (slice(None), slice(0, height), slice(0, width))
    logit_sum = own.logit_sum[own_region].copy()
    weight_sum = own.weight_sum[:height, :width].copy()
    logit_sum[:, :40] += above.logit_sum
    weight_sum[:40] += above.weight_sum
    logit_sum[:, :, :30] += left.logit_sum
    weight_sum[:, :30] += left.weight_sum
    weight_sum[5, 7] = logit_sum[:, 5, 7] = 0  # no tile covered this pixel
    left.weight_sum[5, 7] = left.logit_sum[:, 5, 7] = above.weight_sum[5, 7] = above.logit_sum[:, 5, 7] = 0
    own.weight_sum[5, 7] = own.logit_sum[:, 5, 7] = 0
    merged = Overlap(block.y0, block.y1, block.x0, block.x1, logit_sum, weight_sum)
    card = types.SimpleNamespace(task=task, class_names=["clear", "cloud", "shadow"][:classes] if task == "cloud"
                                 else [f"class {index}" for index in range(classes)])
    job = types.SimpleNamespace(card=card, probabilities=True)
    nodata = np.zeros((height, width), bool)
    nodata[60, 80] = True

    expected_nodata, got_nodata = nodata.copy(), nodata.copy()
    expected = _output_arrays(job, block, [merged], expected_nodata)
    got = _output_arrays(job, block, [own, above, left], got_nodata)
    # Without the block's own sums first, the bands start from zeros.
    reordered = _output_arrays(job, block, [above, left, own], nodata.copy())

    assert expected.keys() == got.keys() == reordered.keys()
    for name in expected:
        assert np.array_equal(expected[name], got[name]), name
        assert np.array_equal(expected[name], reordered[name]), name
    assert np.array_equal(expected_nodata, got_nodata)
    assert got_nodata[5, 7]
    assert got_nodata[60, 80]
    assert got_nodata.sum() == 2
    for values in got.values():
        assert (values[..., 5, 7] == layout.PROBABILITY_FILL).all()
