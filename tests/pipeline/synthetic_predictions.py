"""Synthetic prediction stores on a shared grid, for the mosaic and export tests.

Each store follows the layout the inference stage writes: uint8
``landcover_probability`` (class, y, x) as round(p * 250), ``landcover``,
``landcover_confidence`` and optionally ``cloud_probability``, fill 255,
with the grid in a ``spatial_ref`` coordinate.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr
from affine import Affine
from odc.geo.geobox import GeoBox
from odc.geo.xr import xr_coords

LEGEND = (
    (0, "water", "#1f78b4"),
    (1, "tree cover", "#33a02c"),
    (2, "cropland", "#ffff99"),
    (3, "built-up", "#e31a1c"),
)
CLASS_IDS = tuple(entry[0] for entry in LEGEND)
PROVENANCE = {
    "models": {"landcover": {"card": "tiny-test", "weights": "test.safetensors", "fingerprint": "ab" * 32}},
    "input_items": ["S2A_TEST_1", "S2B_TEST_2", "S2A_TEST_3"],
    "job": {"name": "synthetic"},
}


def job_geobox(height: int = 96, width: int = 80, resolution_m: float = 10.0) -> GeoBox:
    """Return a UTM 18N grid whose upper-left corner is (441120, 4174860)."""
    return GeoBox((height, width), Affine(resolution_m, 0, 441120, 0, -resolution_m, 4174860), "EPSG:32618")


def probabilities_for(classes: np.ndarray, n_classes: int = len(CLASS_IDS), peak: float = 0.7) -> np.ndarray:
    """Return uint8 (C, H, W) probabilities with ``peak`` on ``classes``, the rest shared."""
    rest = (1.0 - peak) / (n_classes - 1)
    probability = np.full((n_classes, *classes.shape), rest, dtype=np.float64)
    for index in range(n_classes):
        probability[index][classes == index] = peak
    return np.rint(probability * 250).astype(np.uint8)


def write_prediction(
    path: Path,
    geobox: GeoBox,
    *,
    observation_id: str,
    datetime: str,
    probabilities: np.ndarray,
    cloud: np.ndarray | None,
    observed: np.ndarray | None = None,
    chunk_px: int = 32,
    observation_attrs: bool = True,
    class_coordinate: bool = True,
) -> str:
    """Write one prediction store and return its path as a string.

    ``observed`` (bool, (H, W)) marks pixels the scene covers; the others
    contain fill 255 in every variable. With ``observation_attrs=False`` the
    store has no observation id, time or item ids, only the per-variable
    ``card`` and ``fingerprint`` that the inference stage writes. With
    ``class_coordinate=False`` the ``class`` dimension has no coordinate.
    """
    height, width = geobox.shape.y, geobox.shape.x
    observed = np.ones((height, width), dtype=bool) if observed is None else observed
    probabilities = np.where(observed, probabilities, 255).astype(np.uint8)
    scaled = np.where(probabilities == 255, 0, probabilities) / 250.0
    landcover = np.where(observed, scaled.argmax(axis=0), 255).astype(np.uint8)
    confidence = np.where(observed, np.rint(scaled.max(axis=0) * 100), 255).astype(np.uint8)

    variables = {
        "landcover_probability": (("class", "y", "x"), probabilities),
        "landcover": (("y", "x"), landcover),
        "landcover_confidence": (("y", "x"), confidence),
    }
    if cloud is not None:
        variables["cloud_probability"] = (("y", "x"), np.where(observed, cloud, 255).astype(np.uint8))

    dataset = xr.Dataset(
        variables,
        coords={**xr_coords(geobox, crs_coord_name="spatial_ref"), "class": np.asarray(CLASS_IDS, dtype=np.uint8)},
        attrs={
            "observation_id": observation_id,
            "datetime": datetime,
            "item_ids": [f"{observation_id}_item"],
            "cards": {"landcover": {"name": "tiny-test", "fingerprint": "ab" * 32}},
        }
        if observation_attrs
        else {},
    )
    if not class_coordinate:
        dataset = dataset.drop_vars("class")
    for name in variables:
        dataset[name].attrs["grid_mapping"] = "spatial_ref"
        dataset[name].attrs.update({"card": "tiny-test", "fingerprint": "ab" * 32})
    encoding = {name: {"chunks": (1, chunk_px, chunk_px)[-dataset[name].ndim :], "fill_value": 255} for name in variables}
    dataset.to_zarr(path, mode="w", zarr_format=3, consolidated=False, encoding=encoding)
    return str(path)


class ThreeScenes:
    """Three overlapping observations of a 96 x 80 grid with known clouds.

    - ``a`` (2024-05-01) covers the grid with classes ``truth``. Its cloud
      probability is 90 % in rows 0-31 and 5 % elsewhere.
    - ``b`` (2024-05-11) covers the grid with ``truth``, except in columns
      60+, where it predicts ``(truth + 1) % 4``. Its cloud probability is
      80 % in rows 0-31 and in columns 60+, and 20 % elsewhere.
    - ``c`` (2024-05-21) covers rows 48+ only, with ``truth`` and 10 % cloud.

    So rows 0-31 are cloudy in every observation that saw them, columns 60+
    of rows 32-47 are clear only in ``a``, and the rest is clear in two or
    three observations.
    """

    height, width = 96, 80

    def __init__(self, folder: Path, *, with_cloud: bool = True) -> None:
        self.geobox = job_geobox(self.height, self.width)
        rng = np.random.default_rng(7)
        self.truth = rng.integers(0, len(CLASS_IDS), size=(self.height, self.width)).astype(np.uint8)
        self.truth[-1, -1] = 0  # class 0 must exist for the round-trip checks

        rows = np.arange(self.height)[:, np.newaxis]
        cols = np.arange(self.width)[np.newaxis, :]
        top = np.broadcast_to(rows < 32, (self.height, self.width))
        right = np.broadcast_to(cols >= 60, (self.height, self.width))
        self.cloudy_everywhere = top
        self.only_a_clear = ~top & right & np.broadcast_to(rows < 48, (self.height, self.width))

        classes_b = np.where(right, (self.truth + 1) % len(CLASS_IDS), self.truth).astype(np.uint8)
        cloud_a = np.where(top, 90, 5).astype(np.uint8)
        cloud_b = np.where(top | right, 80, 20).astype(np.uint8)
        cloud_c = np.full((self.height, self.width), 10, dtype=np.uint8)
        observed_c = np.broadcast_to(rows >= 48, (self.height, self.width)).copy()

        self.urls = [
            write_prediction(folder / "c.zarr", self.geobox, observation_id="c", datetime="2024-05-21T10:00:00Z",
                             probabilities=probabilities_for(self.truth), cloud=cloud_c if with_cloud else None,
                             observed=observed_c),
            write_prediction(folder / "a.zarr", self.geobox, observation_id="a", datetime="2024-05-01T10:00:00Z",
                             probabilities=probabilities_for(self.truth), cloud=cloud_a if with_cloud else None),
            write_prediction(folder / "b.zarr", self.geobox, observation_id="b", datetime="2024-05-11T10:00:00Z",
                             probabilities=probabilities_for(classes_b), cloud=cloud_b if with_cloud else None),
        ]
