"""Overview pyramid of a mosaic store, described by the Zarr multiscales convention.

Level 0 is the mosaic's root group itself, so that a plain
``xr.open_zarr(store)`` gives full resolution. Level ``k`` (``k >= 1``) is
the child group ``"k"``, reduced by 2 in x and y from level ``k - 1``. The
class layer is reduced by mode: ties go to the lowest class id, and nodata
wins only where every source pixel is nodata. Probabilities and counts are
reduced by the mean of the pixels that are not nodata. Every level has its
own ``spatial_ref`` and x/y coordinates, so xarray and rioxarray read each
level's grid.

The root group's ``multiscales`` attribute follows the zarr-conventions
multiscales convention v0.1 (layout entries with ``asset``,
``derived_from``, ``transform.scale`` and ``resampling_method``, plus the
absolute ``proj:transform`` and ``proj:shape`` of each level).
NOTE: the convention expects every level in a child group. Level 0 is the
root group here, and its layout entry names it ``"."``. Viewers that only
open child groups therefore see the overviews but not full resolution.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from odc.geo.geobox import GeoBox

from pipeline import layout

logger = logging.getLogger(__name__)

MULTISCALES_CONVENTION = {
    "uuid": "d35379db-88df-4056-af3a-620245f8e347",
    "name": "multiscales",
    "schema_url": "https://raw.githubusercontent.com/zarr-conventions/multiscales/refs/tags/v0.1.0/schema.json",
    "spec_url": "https://github.com/zarr-conventions/multiscales/blob/v0.1.0/README.md",
}

ResamplingMethod = str  # "mode" or "average", the GDAL names


def overview_shapes(shape: tuple[int, int], min_size_px: int) -> list[tuple[int, int]]:
    """Return the ``(height, width)`` of each overview level, coarsest last.

    Levels halve (rounding up) until both sides are at most ``min_size_px``;
    a grid already that small gets no overview.
    """
    if min_size_px < 1:
        raise ValueError(f"min_size_px is {min_size_px}; expected a positive number of pixels")
    shapes = []
    height, width = shape
    while height > min_size_px or width > min_size_px:
        height, width = -(-height // 2), -(-width // 2)
        shapes.append((height, width))
    return shapes


def _pad_to_even(block: np.ndarray, fill: int) -> np.ndarray:
    pad_y, pad_x = block.shape[0] % 2, block.shape[1] % 2
    if pad_y or pad_x:
        block = np.pad(block, ((0, pad_y), (0, pad_x)), constant_values=fill)
    return block


def _windows(block: np.ndarray) -> np.ndarray:
    """Return ``(H/2, W/2, 4)``: the four pixels of each 2x2 window."""
    height, width = block.shape
    return block.reshape(height // 2, 2, width // 2, 2).transpose(0, 2, 1, 3).reshape(height // 2, width // 2, 4)


def downsample_mode(block: np.ndarray, class_ids: Sequence[int], nodata: int) -> np.ndarray:
    """Reduce a class block by 2 in each axis with the most frequent class.

    Parameters
    ----------
    block
        ``(H, W)`` class ids; odd sides are padded with ``nodata``.
    class_ids
        Class ids that may occur; ties go to the lowest of them.
    nodata
        Value that never wins unless the whole window is nodata.

    Returns
    -------
    numpy.ndarray
        ``(ceil(H/2), ceil(W/2))`` class ids, same dtype as ``block``.
    """
    windows = _windows(_pad_to_even(block, nodata))
    best = np.full(windows.shape[:2], nodata, dtype=block.dtype)
    best_count = np.zeros(windows.shape[:2], dtype=np.int8)
    for class_id in sorted(class_ids):
        count = (windows == class_id).sum(axis=-1, dtype=np.int8)
        wins = count > best_count
        best = np.where(wins, np.asarray(class_id, dtype=block.dtype), best)
        best_count = np.maximum(best_count, count)
    return best


def downsample_mean(block: np.ndarray, nodata: int | None) -> np.ndarray:
    """Reduce a block by 2 in each axis with the rounded mean of its valid pixels.

    Pixels equal to ``nodata`` (and the padding of odd sides) are left out;
    a window with no valid pixel becomes ``nodata``. With ``nodata=None``
    every stored pixel counts and the padding is left out.
    """
    padded = _pad_to_even(block.astype(np.float64), np.nan)
    windows = _windows(padded)
    valid = ~np.isnan(windows)
    if nodata is not None:
        valid &= windows != nodata
    count = valid.sum(axis=-1)
    total = np.where(valid, windows, 0.0).sum(axis=-1)
    mean = np.rint(total / np.maximum(count, 1))
    fill = 0 if nodata is None else nodata
    return np.where(count > 0, mean, fill).astype(block.dtype)


def _reducer_for(variable: xr.DataArray) -> tuple[ResamplingMethod, Callable[[np.ndarray], np.ndarray]]:
    # functools.partial of module functions, unlike lambdas, pickles to
    # workers with plain pickle and gives dask a deterministic token.
    nodata = variable.attrs.get("nodata")
    if "flag_values" in variable.attrs:
        class_ids = tuple(int(value) for value in variable.attrs["flag_values"])
        class_nodata = layout.LANDCOVER_NODATA if nodata is None else int(nodata)
        return "mode", functools.partial(downsample_mode, class_ids=class_ids, nodata=class_nodata)
    return "average", functools.partial(downsample_mean, nodata=None if nodata is None else int(nodata))


def _downsample_array(data: da.Array, reducer: Callable[[np.ndarray], np.ndarray]) -> da.Array:
    # Every block but the last along each axis must have an even size, so
    # that its 2x2 windows never straddle two blocks.
    for axis_chunks in data.chunks:
        if any(size % 2 for size in axis_chunks[:-1]):
            raise ValueError(f"overview input chunks {data.chunks} have an odd size before the edge")
    out_chunks = tuple(tuple(-(-size // 2) for size in axis_chunks) for axis_chunks in data.chunks)
    return data.map_blocks(reducer, chunks=out_chunks, dtype=data.dtype)


def downsample_level(source: xr.Dataset, source_geobox: GeoBox, chunk_px: int) -> tuple[xr.Dataset, GeoBox, dict[str, str]]:
    """Build the next overview level of ``source`` lazily.

    Parameters
    ----------
    source
        Dataset of ``(y, x)`` layers on ``source_geobox``, dask-backed.
    source_geobox
        Grid of ``source``.
    chunk_px
        Side of the output chunks in pixels; the source is read in chunks
        of twice that side.

    Returns
    -------
    tuple
        The reduced dataset (without coordinates), its grid, and the
        resampling method used per layer.
    """
    target_geobox = source_geobox.zoom_out(2)
    layers = {}
    methods = {}
    for name, variable in source.data_vars.items():
        if variable.dims != ("y", "x"):
            continue
        method, reducer = _reducer_for(variable)
        data = variable.data
        if not isinstance(data, da.Array):
            data = da.from_array(np.asarray(data))
        data = data.rechunk((2 * chunk_px, 2 * chunk_px))
        layers[name] = xr.DataArray(_downsample_array(data, reducer), dims=("y", "x"), attrs=dict(variable.attrs))
        methods[name] = method
    return xr.Dataset(layers), target_geobox, methods


def multiscales_attrs(geoboxes: Sequence[GeoBox], methods: dict[str, str]) -> dict[str, Any]:
    """Return the root attributes that describe the pyramid on ``geoboxes``.

    ``geoboxes[0]`` is the full-resolution grid (the root group) and
    ``geoboxes[k]`` the grid of group ``"k"``.
    """
    layout_entries: list[dict[str, Any]] = []
    for level, geobox in enumerate(geoboxes):
        entry: dict[str, Any] = {
            "asset": "." if level == 0 else str(level),
            "transform": {"scale": [1.0, 1.0] if level == 0 else [2.0, 2.0]},
            "proj:transform": list(geobox.affine.to_gdal()),
            "proj:shape": [int(geobox.shape.y), int(geobox.shape.x)],
        }
        if level > 0:
            entry["derived_from"] = "." if level == 1 else str(level - 1)
        layout_entries.append(entry)

    return {
        "zarr_conventions": [MULTISCALES_CONVENTION],
        "multiscales": {
            "layout": layout_entries,
            "resampling_method": "mode" if layout.LANDCOVER_VAR in methods else "average",
            "variable_resampling_methods": methods,
        },
    }
