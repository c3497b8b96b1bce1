"""Cloud-aware compositing of per-observation predictions, one block at a time.

Pure numpy: the mosaic stage maps :func:`composite_block` over the blocks of
the job grid with dask, so the rules below are the whole compositing logic.

For every pixel and observation ``i`` (observations ordered by acquisition
time, then observation id):

- the observation is *valid* where its ``landcover`` is not the fill value;
- its cloud probability ``cloud_i`` (0-100) is *unknown* where the cloud layer
  is absent or filled; an unknown cloud probability counts as clear sky;
- it is *clear* where it is valid and ``cloud_i < cloud_threshold_pct``.

Land cover comes only from clear observations:

- ``"clear-weighted"`` averages the class probabilities of the clear
  observations with weights ``1 - cloud_i / 100`` (1 where unknown) and
  takes the argmax. Ties go to the lowest class index.
- ``"least-cloudy"`` takes the clear observation with the lowest cloud
  probability. Ties go to the earliest observation.

Where no observation is clear, land cover and confidence are nodata and the
composite cloud probability is the lowest one observed, which explains why.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from pipeline import layout

CompositeMethod = Literal["clear-weighted", "least-cloudy"]

COMPOSITE_METHODS: tuple[CompositeMethod, ...] = ("clear-weighted", "least-cloudy")

# Order of the layers in the stacked output of :func:`composite_stack`.
STACK_LAYERS: tuple[str, ...] = (
    layout.LANDCOVER_VAR,
    layout.LANDCOVER_CONFIDENCE_VAR,
    layout.CLOUD_PROBABILITY_VAR,
    layout.CLEAR_OBSERVATIONS_VAR,
    layout.VALID_OBSERVATIONS_VAR,
)

_FILL = layout.PROBABILITY_FILL


@dataclasses.dataclass(frozen=True)
class CompositeLayers:
    """Composite of one block, each array of shape ``(H, W)``.

    Attributes
    ----------
    landcover
        uint8 class id, :data:`pipeline.layout.LANDCOVER_NODATA` where no
        observation is clear.
    landcover_confidence
        uint8 probability of the chosen class in percent (0-100), 255 where
        land cover is nodata.
    cloud_probability
        uint8 cloud probability of the composite in percent (0-100), 255 where
        no observation carries a cloud estimate.
    clear_observations
        uint16 number of clear observations.
    valid_observations
        uint16 number of observations that saw the pixel, clear or not.
    """

    landcover: np.ndarray
    landcover_confidence: np.ndarray
    cloud_probability: np.ndarray
    clear_observations: np.ndarray
    valid_observations: np.ndarray


def composite_block(
    probabilities: np.ndarray | None,
    landcover: np.ndarray,
    confidence: np.ndarray,
    cloud: np.ndarray,
    *,
    class_ids: Sequence[int],
    method: CompositeMethod,
    cloud_threshold_pct: float,
) -> CompositeLayers:
    """Composite ``N`` observations of one block into one land-cover layer.

    Parameters
    ----------
    probabilities
        uint8 ``(N, C, H, W)`` class probabilities as ``round(p * 250)``,
        255 where not observed; ``None`` for ``"least-cloudy"``, which
        does not use them.
    landcover
        uint8 ``(N, H, W)`` per-observation class ids, 255 where not observed.
    confidence
        uint8 ``(N, H, W)`` per-observation confidence in percent, 255 where
        not observed.
    cloud
        uint8 ``(N, H, W)`` cloud probability in percent, 255 where unknown.
    class_ids
        Class id of each of the ``C`` probability planes, in order.
    method
        ``"clear-weighted"`` or ``"least-cloudy"`` (see the module docstring).
    cloud_threshold_pct
        An observation is clear where its cloud probability is below this
        value, in percent (0-100].

    Returns
    -------
    CompositeLayers
        The composite layers of the block.
    """
    if probabilities is None:
        if method == "clear-weighted":
            raise ValueError("method 'clear-weighted' needs the class probabilities; use 'least-cloudy' without them")
    elif len(class_ids) != probabilities.shape[1]:
        n_classes = probabilities.shape[1]
        raise ValueError(
            f"class_ids has {len(class_ids)} entries but the probabilities have "
            f"{n_classes} class planes; pass one class id per plane"
        )
    if method not in COMPOSITE_METHODS:
        raise ValueError(f"unknown compositing method {method!r}; expected one of {COMPOSITE_METHODS}")

    valid = landcover != _FILL
    cloud_known = valid & (cloud != _FILL)
    cloud_pct = np.where(cloud_known, cloud, 0).astype(np.float32)
    clear = valid & (cloud_pct < cloud_threshold_pct)
    any_clear = clear.any(axis=0)

    if method == "clear-weighted":
        chosen_index, confidence_pct, cloud_of_used = _clear_weighted(
            probabilities, clear, cloud_pct, cloud_known
        )
        chosen_id = np.asarray(class_ids, dtype=np.uint8)[chosen_index]
    else:
        chosen_id, confidence_pct, cloud_of_used = _least_cloudy(
            landcover, confidence, clear, cloud_pct, cloud_known
        )

    landcover_out = np.where(any_clear, chosen_id, layout.LANDCOVER_NODATA).astype(np.uint8)
    confidence_out = np.where(any_clear, confidence_pct, _FILL).astype(np.uint8)

    # Where nothing is clear, the lowest cloud probability seen explains the gap.
    lowest_seen = np.where(cloud_known, cloud_pct, np.inf).min(axis=0)
    cloud_out = np.where(any_clear, cloud_of_used, lowest_seen)
    cloud_out = np.where(np.isfinite(cloud_out), np.rint(cloud_out), _FILL).astype(np.uint8)

    return CompositeLayers(
        landcover=landcover_out,
        landcover_confidence=confidence_out,
        cloud_probability=cloud_out,
        clear_observations=clear.sum(axis=0, dtype=np.uint16),
        valid_observations=valid.sum(axis=0, dtype=np.uint16),
    )


def _clear_weighted(
    probabilities: np.ndarray, clear: np.ndarray, cloud_pct: np.ndarray, cloud_known: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    weights = np.where(clear, 1.0 - cloud_pct / 100.0, 0.0).astype(np.float32)
    weight_sum = weights.sum(axis=0)
    safe_sum = np.where(weight_sum > 0, weight_sum, 1.0)

    # Observations are accumulated in a fixed order, so the float sums and
    # the argmax are reproducible bit for bit.
    accumulated = np.zeros(probabilities.shape[1:], dtype=np.float32)
    for index in range(probabilities.shape[0]):
        plane = np.where(probabilities[index] == _FILL, 0, probabilities[index]).astype(np.float32)
        accumulated += weights[index] * plane
    mean_probability = accumulated / (safe_sum * layout.PROBABILITY_SCALE)

    chosen = mean_probability.argmax(axis=0)
    confidence_pct = np.rint(np.clip(mean_probability.max(axis=0), 0.0, 1.0) * 100.0)

    known_weights = np.where(cloud_known, weights, 0.0)
    known_sum = known_weights.sum(axis=0)
    cloud_mean = (known_weights * cloud_pct).sum(axis=0) / np.where(known_sum > 0, known_sum, 1.0)
    cloud_of_used = np.where(known_sum > 0, cloud_mean, np.inf)
    return chosen, confidence_pct, cloud_of_used


def _least_cloudy(
    landcover: np.ndarray,
    confidence: np.ndarray,
    clear: np.ndarray,
    cloud_pct: np.ndarray,
    cloud_known: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ranking = np.where(clear, cloud_pct, np.inf)
    best = ranking.argmin(axis=0)[np.newaxis]

    chosen_id = np.take_along_axis(landcover, best, axis=0)[0]
    confidence_pct = np.take_along_axis(confidence, best, axis=0)[0]
    best_known = np.take_along_axis(cloud_known, best, axis=0)[0]
    best_cloud = np.take_along_axis(cloud_pct, best, axis=0)[0]
    return chosen_id, confidence_pct, np.where(best_known, best_cloud, np.inf)


def composite_stack(
    probabilities: np.ndarray | None,
    landcover: np.ndarray,
    confidence: np.ndarray,
    cloud: np.ndarray,
    *,
    class_ids: Sequence[int],
    method: CompositeMethod,
    cloud_threshold_pct: float,
) -> np.ndarray:
    """Run :func:`composite_block` and stack its layers as uint16 ``(5, H, W)``.

    The layer order is :data:`STACK_LAYERS`. Dask maps this function over
    blocks, because one stacked output lets all layers share one task.
    """
    layers = composite_block(
        probabilities,
        landcover,
        confidence,
        cloud,
        class_ids=class_ids,
        method=method,
        cloud_threshold_pct=cloud_threshold_pct,
    )
    return np.stack([getattr(layers, name) for name in STACK_LAYERS]).astype(np.uint16)


def composite_stack_without_probabilities(
    landcover: np.ndarray, confidence: np.ndarray, cloud: np.ndarray, **options: Any
) -> np.ndarray:
    """Run :func:`composite_stack` on observations stored without class probabilities."""
    return composite_stack(None, landcover, confidence, cloud, **options)
