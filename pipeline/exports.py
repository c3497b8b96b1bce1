"""Cloud-Optimized GeoTIFF exports of a mosaic store, and a COG structure check.

:func:`export_cogs` copies the ``landcover`` and ``cloud_probability`` layers
of a finished mosaic into COGs (512-px tiles, DEFLATE, internal overviews by
mode for classes and average for probabilities, nodata 255, and the class
colours as the GeoTIFF colour table). It streams the layer chunk by chunk
into a tiled GeoTIFF and lets GDAL's COG driver rewrite that file, so memory
stays at one chunk whatever the region size.

:func:`validate_cog` checks what makes a GeoTIFF cloud-optimized: tiles,
overviews, and the layout GDAL's COG driver writes (all IFDs at the start of
the file, then the image data from the smallest overview to full resolution).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.windows import Window

from pipeline import layout
from pipeline.completion import open_mosaic
from pipeline.legend import legend_from_attrs
from pipeline.mosaic_inputs import geobox_of
from pipeline.quicklooks import write_quicklooks

__all__ = ["COG_LAYERS", "InvalidCOGError", "export_cogs", "validate_cog", "write_quicklooks"]

logger = logging.getLogger(__name__)

COG_LAYERS: tuple[str, ...] = (layout.LANDCOVER_VAR, layout.CLOUD_PROBABILITY_VAR)
COG_BLOCK_PX = 512


class InvalidCOGError(ValueError):
    """Raised when a file written as a COG does not have the COG layout."""


def _write_tiled_geotiff(mosaic_url: str, layer: str, path: Path) -> str:
    """Stream one layer into a tiled GeoTIFF; return the overview resampling for it."""
    dataset = open_mosaic(mosaic_url)
    geobox = geobox_of(dataset, mosaic_url)
    variable = dataset[layer]
    nodata = variable.attrs.get("nodata")
    profile = {
        "driver": "GTiff",
        "width": int(variable.sizes["x"]),
        "height": int(variable.sizes["y"]),
        "count": 1,
        "dtype": str(variable.dtype),
        # An EPSG code lets GDAL write the standard GeoTIFF keys rather than a user-defined CRS.
        "crs": f"EPSG:{geobox.crs.epsg}" if geobox.crs.epsg is not None else geobox.crs.to_wkt(),
        "transform": geobox.affine,
        "nodata": nodata,
        "tiled": True,
        "blockxsize": COG_BLOCK_PX,
        "blockysize": COG_BLOCK_PX,
        "compress": "DEFLATE",
        "BIGTIFF": "IF_SAFER",
    }

    chunk_y, chunk_x = variable.data.chunksize
    with rasterio.open(path, "w", **profile) as destination:
        for row in range(0, profile["height"], chunk_y):
            for col in range(0, profile["width"], chunk_x):
                block = variable.isel(y=slice(row, row + chunk_y), x=slice(col, col + chunk_x)).values
                window = Window(col, row, block.shape[1], block.shape[0])
                destination.write(block, 1, window=window)

        destination.set_band_description(1, variable.attrs.get("long_name", layer))
        destination.update_tags(1, units=str(variable.attrs.get("units", "")))
        if "flag_values" in variable.attrs:
            legend = legend_from_attrs(variable.attrs)
            colormap = {entry.id: (*entry.rgb, 255) for entry in legend}
            if nodata is not None:
                colormap[int(nodata)] = (0, 0, 0, 0)
            destination.write_colormap(1, colormap)
            destination.update_tags(1, classes=json.dumps({str(entry.id): entry.name for entry in legend}))
            return "MODE"
    return "AVERAGE"


def export_cogs(
    mosaic_url: str, out_dir: str | Path, *, layers: Sequence[str] = COG_LAYERS
) -> dict[str, Path]:
    """Export layers of a finished mosaic as Cloud-Optimized GeoTIFFs.

    Parameters
    ----------
    mosaic_url
        A complete mosaic store (see :func:`pipeline.completion.open_mosaic`).
    out_dir
        Local folder for the files; created if missing. Existing files of the
        same name are replaced.
    layers
        Layers to export; by default ``landcover`` and ``cloud_probability``.

    Returns
    -------
    dict of str to pathlib.Path
        ``"<layer>_cog"`` -> path of ``<out_dir>/<layer>.tif``, each checked
        with :func:`validate_cog`.

    Raises
    ------
    pipeline.completion.IncompleteStoreError
        If the mosaic store is not complete.
    KeyError
        If a requested layer is not in the store.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    present = set(open_mosaic(mosaic_url).data_vars)
    missing = [layer for layer in layers if layer not in present]
    if missing:
        raise KeyError(f"mosaic {mosaic_url!r} has no layer {missing}; layers present: {sorted(present)}")

    written = {}
    for layer in layers:
        path = out_dir / f"{layer}.tif"
        staging = out_dir / f".{layer}.staging.tif"
        try:
            resampling = _write_tiled_geotiff(mosaic_url, layer, staging)
            rasterio.shutil.copy(
                staging,
                path,
                driver="COG",
                COMPRESS="DEFLATE",
                BLOCKSIZE=COG_BLOCK_PX,
                OVERVIEW_RESAMPLING=resampling,
                BIGTIFF="IF_SAFER",
            )
        finally:
            staging.unlink(missing_ok=True)
        validate_cog(path)
        logger.info("exported %s as COG %s (overviews by %s)", layer, path, resampling.lower())
        written[f"{layer}_cog"] = path
    return written


def validate_cog(path: str | Path) -> None:
    """Check that ``path`` is a Cloud-Optimized GeoTIFF.

    The checks are: a GeoTIFF with square tiles, internal overviews when
    the image is larger than one tile, and GDAL's COG layout marker. All
    IFDs (full resolution first, then each overview) must come before any
    image data, and the image data must run from the smallest overview to
    full resolution.

    Raises
    ------
    InvalidCOGError
        Listing every check that failed.
    """
    problems = []
    with rasterio.open(path) as source:
        if source.driver != "GTiff":
            problems.append(f"driver is {source.driver}, expected GTiff")
        block_y, block_x = source.block_shapes[0]
        if not source.profile.get("tiled") or block_y != block_x:
            problems.append(f"blocks are {block_y}x{block_x} and tiled is {source.profile.get('tiled')}; expected square tiles")
        overview_factors = source.overviews(1)
        tile_px = block_x if source.profile.get("tiled") else COG_BLOCK_PX
        if max(source.width, source.height) > tile_px and not overview_factors:
            problems.append(f"{source.width}x{source.height} image larger than one tile has no overviews")
        if source.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") != "COG":
            problems.append("GDAL reports no COG layout (the ghost header of the COG driver is missing)")

        levels: list[int | None] = [None, *range(len(overview_factors))]
        ifd_offsets = [_tiff_offset(source, "IFD_OFFSET", level) for level in levels]
        data_offsets = [_tiff_offset(source, "BLOCK_OFFSET_0_0", level) for level in levels]

    if ifd_offsets != sorted(ifd_offsets):
        problems.append(f"IFD offsets {ifd_offsets} are not in the order full resolution, then overviews")
    if max(ifd_offsets) > min(data_offsets):
        problems.append(f"an IFD (offsets {ifd_offsets}) lies after image data (first tile at {min(data_offsets)})")
    if data_offsets != sorted(data_offsets, reverse=True):
        problems.append(f"image data offsets {data_offsets} are not ordered smallest overview first")

    if problems:
        raise InvalidCOGError(f"{path} is not a valid COG: " + "; ".join(problems))


def _tiff_offset(source: rasterio.DatasetReader, item: str, level: int | None) -> int:
    value = source.get_tag_item(item, "TIFF", bidx=1, ovr=level)
    return int(value) if value is not None else int(np.iinfo(np.int64).max)
