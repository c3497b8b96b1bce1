"""Match a scene's bands to the bands a model was trained on."""

from __future__ import annotations

import logging
from collections.abc import Sequence

logger = logging.getLogger(__name__)

MAX_MATCH_DISTANCE_UM = 0.1
"""A scene band further than this from a model band (µm) does not stand in for it."""


def select_bands(model_wavelengths_um: Sequence[float], scene_wavelengths_um: Sequence[float]) -> tuple[int, ...]:
    """Pick the scene bands that feed a model, one per model band where the scene has one.

    FlexiMo runs on any band set, but a model receives inputs most like its
    training data when it gets the bands it was trained on. Each model band
    takes the scene band nearest in centre wavelength, if that is within
    :data:`MAX_MATCH_DISTANCE_UM`; a scene band is used at most once, and the
    result keeps the scene's band order.

    Parameters
    ----------
    model_wavelengths_um
        Centre wavelengths of the model card's bands, in µm.
    scene_wavelengths_um
        Centre wavelengths of the input cube's bands, in µm.

    Returns
    -------
    tuple of int
        Indices into the scene's bands, ascending.

    Raises
    ------
    ValueError
        When no scene band is within :data:`MAX_MATCH_DISTANCE_UM` of any model band.
    """
    chosen: set[int] = set()
    unmatched: list[float] = []
    for wavelength in model_wavelengths_um:
        candidates = [index for index in range(len(scene_wavelengths_um)) if index not in chosen]
        if not candidates:
            unmatched.append(wavelength)
            continue
        nearest = min(candidates, key=lambda index: (abs(scene_wavelengths_um[index] - wavelength), index))
        if abs(scene_wavelengths_um[nearest] - wavelength) <= MAX_MATCH_DISTANCE_UM:
            chosen.add(nearest)
        else:
            unmatched.append(wavelength)

    if not chosen:
        raise ValueError(
            f"no scene band (wavelengths {list(scene_wavelengths_um)} µm) lies within {MAX_MATCH_DISTANCE_UM} µm "
            f"of the model's bands ({list(model_wavelengths_um)} µm); use a model trained on this sensor's bands"
        )
    if unmatched:
        logger.info("the scene has no band near %s µm of the model; the model runs without it", unmatched)
    return tuple(sorted(chosen))
