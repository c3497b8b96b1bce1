"""Small GeoTIFF writers and readers shared by the ingest tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import rasterio
from odc.geo.geobox import GeoBox
from rasterio.warp import transform_bounds, transform_geom


def footprint_of(path: Path) -> tuple[str, tuple[float, float, float, float]]:
    """Return a raster's footprint as a lon/lat GeoJSON string and its lon/lat bbox."""
    with rasterio.open(path) as src:
        left, bottom, right, top = src.bounds
        ring = [(left, top), (right, top), (right, bottom), (left, bottom), (left, top)]
        geometry = transform_geom(src.crs, "EPSG:4326", {"type": "Polygon", "coordinates": [ring]})
    lons = [point[0] for point in geometry["coordinates"][0]]
    lats = [point[1] for point in geometry["coordinates"][0]]
    return json.dumps(geometry), (min(lons), min(lats), max(lons), max(lats))


def read_dn(path: Path) -> np.ndarray:
    """Stored values of band 1, as int64 so that arithmetic cannot overflow."""
    with rasterio.open(path) as src:
        return src.read(1).astype(np.int64)


def source_geobox(path: Path) -> GeoBox:
    """The pixel grid of a raster file."""
    with rasterio.open(path) as src:
        return GeoBox(src.shape, src.transform, src.crs.to_wkt())


def write_utm_scene(path: Path, epsg: int, bbox_lonlat, value: int, resolution_m: float = 100.0) -> None:
    """Write a constant uint16 GeoTIFF in ``epsg`` (nodata 0) that covers ``bbox_lonlat``."""
    left, bottom, right, top = transform_bounds("EPSG:4326", f"EPSG:{epsg}", *bbox_lonlat, densify_pts=51)
    left = np.floor(left / resolution_m) * resolution_m
    top = np.ceil(top / resolution_m) * resolution_m
    width = int(np.ceil((right - left) / resolution_m))
    height = int(np.ceil((top - bottom) / resolution_m))
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 1,
        "dtype": "uint16",
        "crs": f"EPSG:{epsg}",
        "transform": rasterio.transform.from_origin(left, top, resolution_m, resolution_m),
        "nodata": 0,
        "tiled": True,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.full((1, height, width), value, dtype=np.uint16))


GF2_DELIVERY = "GF2_PMS1_W91.0_N17.6_20200510_L1A0004793969"
GF2_MSS_STEM = f"{GF2_DELIVERY}-MSS1"
GF2_MSS_SHAPE = (6908, 7300)  # (height, width) of the real image, from its XML


def write_decimated_gf2_delivery(gaofen_dir: Path, out_dir: Path, factor: int) -> tuple[Path, np.ndarray]:
    """Write a Gaofen-2 MSS Level-1A delivery whose image is ``factor`` times smaller than the real one.

    The real metadata XML is copied, and the real RPCs are rewritten for the
    smaller image (line and sample offsets and scales divided by
    ``factor``), so the synthetic image lands where the real one would. The
    image has no CRS and no geotransform. Its pixel values are constant in
    4 x 4 pixel blocks: ``1000 + 100 * (row // 4) + column // 4``.

    Returns
    -------
    tuple
        The delivery folder and the (height, width) uint16 pixel values of each band.
    """
    import re
    import shutil

    source = gaofen_dir / GF2_DELIVERY
    folder = out_dir / GF2_DELIVERY
    folder.mkdir(parents=True)
    shutil.copy(source / f"{GF2_MSS_STEM}.xml", folder)

    def rescale(match: re.Match) -> str:
        return f"{match.group(1)} = {float(match.group(2)) / factor!r};"

    rpc_text = (source / f"{GF2_MSS_STEM}.rpb").read_text()
    rpc_text = re.sub(r"(lineOffset|sampOffset|lineScale|sampScale)\s*=\s*([-+\d.Ee]+);", rescale, rpc_text)
    (folder / f"{GF2_MSS_STEM}.rpb").write_text(rpc_text)

    height, width = GF2_MSS_SHAPE[0] // factor, GF2_MSS_SHAPE[1] // factor
    rows, columns = np.mgrid[0:height, 0:width]
    values = (1000 + 100 * (rows // 4) + columns // 4).astype(np.uint16)
    profile = {"driver": "GTiff", "width": width, "height": height, "count": 4, "dtype": "uint16"}
    with rasterio.open(folder / f"{GF2_MSS_STEM}.tiff", "w", **profile) as dst:
        for band in range(1, 5):
            dst.write(values, band)
    return folder, values
