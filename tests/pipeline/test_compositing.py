"""Table tests of the per-block compositing rules."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.compositing import STACK_LAYERS, composite_block, composite_stack

CLASS_IDS = (0, 1, 2)


def _observation(probabilities: tuple[float, ...] | None, cloud: int) -> tuple[np.ndarray, int, int, int]:
    """One pixel of one observation: (C,) probabilities, landcover, confidence, cloud."""
    if probabilities is None:
        return np.full(len(CLASS_IDS), 255, dtype=np.uint8), 255, 255, 255
    scaled = np.rint(np.asarray(probabilities) * 250).astype(np.uint8)
    return scaled, int(np.argmax(probabilities)), round(100 * max(probabilities)), cloud


def _composite(pixels: list[tuple[tuple[float, ...] | None, int]], method: str, threshold: float = 50.0):
    observations = [_observation(probabilities, cloud) for probabilities, cloud in pixels]
    probabilities = np.stack([obs[0] for obs in observations])[:, :, np.newaxis, np.newaxis]
    landcover = np.array([obs[1] for obs in observations], dtype=np.uint8).reshape(-1, 1, 1)
    confidence = np.array([obs[2] for obs in observations], dtype=np.uint8).reshape(-1, 1, 1)
    cloud = np.array([obs[3] for obs in observations], dtype=np.uint8).reshape(-1, 1, 1)
    layers = composite_block(probabilities, landcover, confidence, cloud, class_ids=CLASS_IDS,
                             method=method, cloud_threshold_pct=threshold)
    return {name: int(getattr(layers, name)[0, 0]) for name in STACK_LAYERS}


@pytest.mark.parametrize(
    ("pixels", "method", "expected"),
    [
        # one clear observation wins over a cloudy one that predicts another class
        ([((0.8, 0.1, 0.1), 10), ((0.1, 0.8, 0.1), 90)], "clear-weighted",
         {"landcover": 0, "landcover_confidence": 80, "cloud_probability": 10, "clear_observations": 1, "valid_observations": 2}),
        # weights 0.9 and 0.6: class 1 gets (0.9 * 0.3 + 0.6 * 0.7) / 1.5 = 0.46,
        # class 0 only (0.9 * 0.6 + 0.6 * 0.2) / 1.5 = 0.44
        ([((0.6, 0.3, 0.1), 10), ((0.2, 0.7, 0.1), 40)], "clear-weighted",
         {"landcover": 1, "landcover_confidence": 46, "cloud_probability": 22, "clear_observations": 2, "valid_observations": 2}),
        # all cloudy: nodata, and the lowest cloud probability seen
        ([((0.8, 0.1, 0.1), 70), ((0.1, 0.8, 0.1), 95)], "clear-weighted",
         {"landcover": 255, "landcover_confidence": 255, "cloud_probability": 70, "clear_observations": 0, "valid_observations": 2}),
        # never observed
        ([(None, 0), (None, 0)], "clear-weighted",
         {"landcover": 255, "landcover_confidence": 255, "cloud_probability": 255, "clear_observations": 0, "valid_observations": 0}),
        # a tie of equal weights and mirrored probabilities goes to the lower class index
        ([((0.45, 0.45, 0.1), 20), ((0.45, 0.45, 0.1), 20)], "clear-weighted",
         {"landcover": 0, "landcover_confidence": 45, "cloud_probability": 20, "clear_observations": 2, "valid_observations": 2}),
        ([((0.1, 0.45, 0.45), 20), ((0.1, 0.45, 0.45), 20)], "clear-weighted",
         {"landcover": 1, "landcover_confidence": 45, "cloud_probability": 20, "clear_observations": 2, "valid_observations": 2}),
        # least cloudy takes the clearer observation, whatever its class
        ([((0.8, 0.1, 0.1), 30), ((0.1, 0.1, 0.8), 5)], "least-cloudy",
         {"landcover": 2, "landcover_confidence": 80, "cloud_probability": 5, "clear_observations": 2, "valid_observations": 2}),
        # equally cloudy: the earlier observation wins
        ([((0.1, 0.7, 0.2), 5), ((0.1, 0.1, 0.8), 5)], "least-cloudy",
         {"landcover": 1, "landcover_confidence": 70, "cloud_probability": 5, "clear_observations": 2, "valid_observations": 2}),
        # cloud exactly at the threshold is not clear
        ([((0.8, 0.1, 0.1), 50)], "least-cloudy",
         {"landcover": 255, "landcover_confidence": 255, "cloud_probability": 50, "clear_observations": 0, "valid_observations": 1}),
        # unknown cloud (255 with a valid land cover) counts as clear, weight 1
        ([((0.1, 0.8, 0.1), 255)], "clear-weighted",
         {"landcover": 1, "landcover_confidence": 80, "cloud_probability": 255, "clear_observations": 1, "valid_observations": 1}),
    ],
)
def test_composite_block_rules(pixels, method: str, expected: dict[str, int]) -> None:
    assert _composite(pixels, method) == expected


def test_composite_block_maps_planes_to_class_ids() -> None:
    probabilities = np.array([[[[25]], [[200]], [[25]]]], dtype=np.uint8)
    ones = np.ones((1, 1, 1), dtype=np.uint8)
    layers = composite_block(probabilities, ones, ones * 80, ones * 0, class_ids=(10, 20, 30),
                             method="clear-weighted", cloud_threshold_pct=50)
    assert layers.landcover[0, 0] == 20


def test_composite_block_rejects_class_count_mismatch() -> None:
    probabilities = np.zeros((1, 3, 2, 2), dtype=np.uint8)
    zeros = np.zeros((1, 2, 2), dtype=np.uint8)
    with pytest.raises(ValueError, match="class_ids has 2 entries but the probabilities have 3 class planes"):
        composite_block(probabilities, zeros, zeros, zeros, class_ids=(0, 1), method="clear-weighted", cloud_threshold_pct=50)


def test_composite_block_rejects_unknown_method() -> None:
    probabilities = np.zeros((1, 3, 2, 2), dtype=np.uint8)
    zeros = np.zeros((1, 2, 2), dtype=np.uint8)
    with pytest.raises(ValueError, match="unknown compositing method 'median'"):
        composite_block(probabilities, zeros, zeros, zeros, class_ids=CLASS_IDS, method="median", cloud_threshold_pct=50)


def test_composite_stack_matches_block() -> None:
    rng = np.random.default_rng(3)
    probabilities = rng.integers(0, 251, size=(3, 3, 8, 8)).astype(np.uint8)
    landcover = probabilities.argmax(axis=1).astype(np.uint8)
    confidence = np.full((3, 8, 8), 50, dtype=np.uint8)
    cloud = rng.integers(0, 101, size=(3, 8, 8)).astype(np.uint8)
    kwargs = {"class_ids": CLASS_IDS, "method": "clear-weighted", "cloud_threshold_pct": 60.0}

    stacked = composite_stack(probabilities, landcover, confidence, cloud, **kwargs)
    layers = composite_block(probabilities, landcover, confidence, cloud, **kwargs)
    assert stacked.shape == (len(STACK_LAYERS), 8, 8)
    for index, name in enumerate(STACK_LAYERS):
        np.testing.assert_array_equal(stacked[index], getattr(layers, name))
