"""Summary of a mosaic store for ``fleximo inspect``: layers, grid, class shares, provenance."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from pipeline import layout
from pipeline.completion import COMPLETION_ATTR, is_complete
from pipeline.legend import legend_from_attrs
from pipeline.mosaic_inputs import geobox_of
from pipeline.stores import open_dataset, zarr_store


def _block_histogram(block: np.ndarray) -> np.ndarray:
    return np.bincount(block.ravel(), minlength=256).reshape(1, 1, 256)


def class_histogram(landcover: da.Array) -> da.Array:
    """Return the lazy pixel count of each value 0-255 of a uint8 ``(y, x)`` array, shape ``(256,)``.

    Each block is counted where it is, so no block is reshaped or moved.
    """
    per_block = landcover.map_blocks(_block_histogram, new_axis=2, chunks=(1, 1, 256), dtype=np.int64)
    return per_block.sum(axis=(0, 1))


def describe_mosaic(url: str) -> dict[str, Any]:
    """Summarise a mosaic store for ``fleximo inspect``.

    Returns
    -------
    dict
        ``complete`` (bool), ``layers`` (name -> dtype, shape, nodata),
        ``grid`` (``crs``, ``epsg``, ``resolution_m``, ``shape``, ``bounds``),
        ``overview_levels``, ``class_shares_pct`` (class name -> percent of
        the pixels with a class; only for a complete store), ``nodata_pct``,
        ``time_range`` and ``provenance``. For a complete prediction store
        also ``cards``, the model cards it was predicted with (name ->
        fingerprint), and ``precisions``, what each card's model ran in
        (name -> list such as ``["float32"]``).
    """
    dataset = open_dataset(url)
    root_attrs = dict(zarr.open_group(zarr_store(url, "r"), mode="r", zarr_format=3).attrs)
    geobox = geobox_of(dataset, url)
    crs = geobox.crs
    transform = geobox.affine
    summary: dict[str, Any] = {
        "url": str(url),
        "complete": is_complete(url),
        "layers": {
            name: {"dtype": str(variable.dtype), "shape": list(variable.shape), "nodata": variable.attrs.get("nodata")}
            for name, variable in dataset.data_vars.items()
        },
        "grid": {
            "crs": f"EPSG:{crs.epsg}" if crs.epsg is not None else crs.to_wkt(),
            "epsg": crs.epsg,
            "resolution_m": [abs(transform.a), abs(transform.e)],
            "shape": [int(geobox.shape.y), int(geobox.shape.x)],
            "bounds": list(geobox.extent.boundingbox),
        },
        "overview_levels": len(root_attrs.get("multiscales", {}).get("layout", [None])) - 1,
        "time_range": [root_attrs.get("start_datetime"), root_attrs.get("end_datetime")],
        "provenance": root_attrs.get("provenance", {}),
        "software_version": root_attrs.get("software_version"),
        "input_item_ids": root_attrs.get("input_item_ids", []),
    }
    record = root_attrs.get(COMPLETION_ATTR, {})
    if summary["complete"] and record.get("stage") == "infer":
        summary["cards"] = dict(record.get("cards", {}))
        summary["precisions"] = dict(record.get("precisions", {}))
    if summary["complete"] and layout.LANDCOVER_VAR in dataset:
        summary.update(_class_shares(dataset[layout.LANDCOVER_VAR], root_attrs.get("class_pixel_counts")))
    return summary


def _classes(attrs: Mapping[str, Any]) -> list[tuple[int, str]]:
    """Return ``(class id, name)`` from a mosaic's legend, or from a prediction store's ``classes`` list."""
    if "flag_values" not in attrs and attrs.get("classes"):
        return list(enumerate(str(name) for name in attrs["classes"]))
    return [(entry.id, entry.name) for entry in legend_from_attrs(attrs)]


def _class_shares(landcover: xr.DataArray, stored_counts: Mapping[str, int] | None) -> dict[str, Any]:
    if stored_counts is not None:
        counts = np.zeros(256, dtype=np.int64)
        for value, count in stored_counts.items():
            counts[int(value)] = int(count)
    else:
        counts = class_histogram(landcover.data).compute()
    total = int(counts.sum())
    nodata = int(landcover.attrs.get("nodata", layout.LANDCOVER_NODATA))
    with_class = total - int(counts[nodata])
    shares = {}
    for class_id, name in _classes(landcover.attrs):
        shares[name] = round(100.0 * int(counts[class_id]) / with_class, 3) if with_class else 0.0
    return {"class_shares_pct": shares, "nodata_pct": round(100.0 * int(counts[nodata]) / total, 3) if total else 0.0}
