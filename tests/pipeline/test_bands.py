"""Matching a scene's bands to a model's training bands."""

from __future__ import annotations

import pytest

from pipeline.bands import select_bands

S2_12 = [0.443, 0.49, 0.56, 0.665, 0.705, 0.74, 0.783, 0.842, 0.865, 0.945, 1.61, 2.19]
L8_OLI_7 = [0.443, 0.482, 0.561, 0.655, 0.865, 1.609, 2.201]
GF2_MSS = [0.485, 0.555, 0.66, 0.83]


@pytest.mark.parametrize(
    ("model", "scene", "expected"),
    [
        (S2_12, S2_12, tuple(range(12))),
        # Landsat 8 model on Sentinel-2: B01 B02 B03 B04 B8A B11 B12.
        (L8_OLI_7, S2_12, (0, 1, 2, 3, 8, 10, 11)),
        # Sentinel-2 model on Gaofen-2: every Gaofen band is used once.
        (S2_12, GF2_MSS, (0, 1, 2, 3)),
        (GF2_MSS, S2_12, (1, 2, 3, 7)),
        # Ties go to the first scene band.
        ([0.5], [0.45, 0.55], (0,)),
    ],
)
def test_select_bands_table(model, scene, expected):
    assert select_bands(model, scene) == expected


def test_select_bands_keeps_scene_order():
    assert select_bands([2.19, 0.49], S2_12) == (1, 11)


def test_select_bands_far_band_left_out():
    assert select_bands([0.49, 10.9], S2_12) == (1,)


def test_select_bands_no_match_is_clear():
    with pytest.raises(ValueError, match=r"no scene band .* within 0\.1 µm .* trained on this sensor"):
        select_bands([10.9, 12.0], S2_12)
