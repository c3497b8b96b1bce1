"""Quantization and blending arithmetic of the block tasks."""

import numpy as np
import pytest
import torch

from pipeline.blocks import LOGIT_LIMIT, LOGIT_SCALE, _first_index_of, quantize_logits
from pipeline.tiling import BLEND_LEVELS


def test_quantize_returns_int32_steps():
    logits = torch.tensor([[[0.0, 1.0]], [[0.5, -1.0]]])

    quantized = quantize_logits(logits.clone(), "test")

    assert quantized.dtype == torch.int32
    # Each pixel's largest logit becomes 0: [[-0.5, 0]], [[0, -2]] in steps of 1 / LOGIT_SCALE.
    assert quantized.tolist() == [[[-LOGIT_SCALE // 2, 0]], [[0, -2 * LOGIT_SCALE]]]


def test_shifting_keeps_the_softmax():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 8, 8, generator=generator) * 3

    shifted = quantize_logits(logits.clone(), "test").float() / LOGIT_SCALE

    assert torch.allclose(torch.softmax(shifted, dim=0), torch.softmax(logits, dim=0), atol=2e-3)


def test_far_below_the_top_is_clamped():
    logits = torch.tensor([[[100.0]], [[0.0]]])

    quantized = quantize_logits(logits, "test")

    assert quantized[:, 0, 0].tolist() == [0, -LOGIT_LIMIT * LOGIT_SCALE]


def test_single_class_is_clamped_on_both_sides():
    logits = torch.tensor([[[-1e6, -3.25, 2.5, 1e6]]])

    quantized = quantize_logits(logits, "test")

    assert quantized[0, 0].tolist() == [-LOGIT_LIMIT * LOGIT_SCALE, -832, 640, LOGIT_LIMIT * LOGIT_SCALE]


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_logits_name_the_model(value):
    logits = torch.zeros(3, 2, 2)
    logits[1, 0, 1] = value

    with pytest.raises(FloatingPointError, match="'broken-card'"):
        quantize_logits(logits, "broken-card")


def test_nan_single_class_logits_name_the_model():
    with pytest.raises(FloatingPointError, match="'broken-card'"):
        quantize_logits(torch.tensor([[[float("nan")]]]), "broken-card")


def test_largest_blend_sum_fits_in_int32():
    # Four tiles at most cover a pixel, each at the largest weight and logit.
    largest_term = LOGIT_LIMIT * LOGIT_SCALE * BLEND_LEVELS**2
    assert 4 * largest_term <= np.iinfo(np.int32).max


def test_first_index_matches_argmax_ties():
    rng = np.random.default_rng(3)
    values = rng.integers(0, 3, size=(6, 40, 30)).astype(np.float32)

    labels = _first_index_of(values, values.max(axis=0))

    assert labels.dtype == np.uint8
    assert np.array_equal(labels, values.argmax(axis=0))
