"""Job grid: the one regional pixel grid that every observation is loaded onto.

The grid is an :class:`odc.geo.geobox.GeoBox`: a CRS, a square pixel size and
an origin snapped to whole multiples of that size, so that grids planned for
overlapping jobs at the same resolution share pixel edges.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence

import shapely
from odc.geo.crs import CRS
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry, box

from catalog.scene import SceneDescription

logger = logging.getLogger(__name__)

LONLAT = "EPSG:4326"

# Densify footprint and AOI edges to segments no longer than this before
# reprojection, in the units of the CRS they are straight in (metres for UTM,
# degrees for lon/lat), so curved edges bound the grid correctly.
DENSIFY_M = 1000.0
DENSIFY_DEG = 0.01


def plan_grid(
    scenes: Sequence[SceneDescription],
    *,
    bbox_lonlat: tuple[float, float, float, float] | None = None,
    crs: str | int | None = None,
    resolution_m: float | None = None,
) -> GeoBox:
    """Plan the job grid that covers the scenes, clipped to the area of interest.

    Parameters
    ----------
    scenes
        Scenes the job will load. Their footprints bound the grid.
    bbox_lonlat
        Area of interest ``(west, south, east, north)`` in EPSG:4326 degrees.
        ``None`` uses the union of the scene footprints.
    crs
        CRS of the grid as an EPSG code or any string pyproj accepts. ``None``
        picks the WGS 84 UTM zone of the area's centroid.
    resolution_m
        Pixel size in metres. ``None`` uses the finest GSD of the scenes'
        reflectance bands.

    Returns
    -------
    GeoBox
        North-up grid with square pixels whose origin is a whole multiple of
        the resolution. It covers the footprints clipped to ``bbox_lonlat``.

    Raises
    ------
    ValueError
        If ``scenes`` is empty, the area of interest misses every footprint,
        the resolution is not positive, or the CRS is not projected in metres.
    """
    if not scenes:
        raise ValueError("plan_grid needs at least one scene, but the catalog search returned none; widen the search")
    if resolution_m is None:
        resolution_m = min(scene.finest_gsd_m for scene in scenes)
    if not (math.isfinite(resolution_m) and resolution_m > 0):
        raise ValueError(f"resolution_m must be a positive number of metres, got {resolution_m!r}")

    footprints_lonlat = shapely.union_all([_footprint_lonlat(scene) for scene in scenes])
    area_lonlat = footprints_lonlat
    if bbox_lonlat is not None:
        area_lonlat = footprints_lonlat.intersection(shapely.box(*_check_bbox(bbox_lonlat)))
        if area_lonlat.is_empty or area_lonlat.area == 0:
            raise ValueError(
                f"bbox_lonlat {bbox_lonlat} does not overlap the footprint of any of the "
                f"{len(scenes)} scenes (union bounds {tuple(round(v, 4) for v in footprints_lonlat.bounds)}); "
                "check the area of interest or the catalog search"
            )

    grid_crs = _grid_crs(crs, area_lonlat)

    extent = _union_in_crs(scenes, grid_crs)
    if bbox_lonlat is not None:
        aoi = box(*bbox_lonlat, crs=LONLAT).to_crs(grid_crs, resolution=DENSIFY_DEG)
        extent = extent.intersection(aoi)
    if extent.is_empty:
        raise ValueError(f"the scenes' footprints and the area of interest do not overlap in {grid_crs}")

    geobox = GeoBox.from_bbox(extent.boundingbox, grid_crs, resolution=resolution_m)
    logger.info(
        "planned grid %s, %s m pixels, %d x %d px (width x height)",
        grid_crs,
        resolution_m,
        geobox.width,
        geobox.height,
    )
    return geobox


def _check_bbox(bbox: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    west, south, east, north = (float(v) for v in bbox)
    if not (-180 <= west < east <= 180 and -90 <= south < north <= 90):
        raise ValueError(
            f"bbox_lonlat must be (west, south, east, north) in degrees with west < east "
            f"and south < north, got {bbox!r}"
        )
    return west, south, east, north


def _footprint_lonlat(scene: SceneDescription) -> shapely.Geometry:
    geometry = shapely.geometry.shape(json.loads(scene.geometry_json))
    if geometry.is_empty:
        return shapely.box(*scene.bbox_lonlat)
    return geometry


def _grid_crs(crs: str | int | None, area_lonlat: shapely.Geometry) -> CRS:
    if crs is None:
        centroid = area_lonlat.centroid
        grid_crs = CRS.utm(centroid.x, centroid.y)
        logger.info("no CRS given, so the grid uses %s, the UTM zone of the area's centroid", grid_crs)
    else:
        grid_crs = CRS(f"EPSG:{crs}" if isinstance(crs, int) else crs)

    if not grid_crs.projected or grid_crs.units[0] not in ("m", "metre", "meter"):
        raise ValueError(
            f"the grid CRS must be projected with metre units, got {grid_crs} with units "
            f"{grid_crs.units}; pass crs= a UTM zone or another metric CRS"
        )
    return grid_crs


def footprint_in_crs(scene: SceneDescription, crs: CRS) -> Geometry:
    """Return the footprint of ``scene`` in ``crs``.

    A footprint's edges are straight in the scene's native CRS (a Sentinel-2
    tile is a UTM rectangle), so its vertices go to the native CRS unchanged
    and the edges are densified there. That keeps a scene already in ``crs``
    exact to the metre, so its grid gains no extra row or column.
    """
    footprint = Geometry(_footprint_lonlat(scene), crs=LONLAT)
    if scene.epsg is not None and scene.map_projected:
        native = footprint.to_crs(f"EPSG:{scene.epsg}")
        return native if native.crs == crs else native.to_crs(crs, resolution=DENSIFY_M)
    return footprint.to_crs(crs, resolution=DENSIFY_DEG)


def _union_in_crs(scenes: Sequence[SceneDescription], grid_crs: CRS) -> Geometry:
    union = footprint_in_crs(scenes[0], grid_crs)
    for scene in scenes[1:]:
        union = union.union(footprint_in_crs(scene, grid_crs))
    return union


def block_geoboxes(geobox: GeoBox, block_px: int) -> dict[tuple[int, int], GeoBox]:
    """Split ``geobox`` into blocks of ``block_px`` square (edge blocks smaller).

    Returns
    -------
    dict
        ``(row, column)`` block index to the block's GeoBox, in row-major order.
    """
    if block_px <= 0:
        raise ValueError(f"block_px must be a positive number of pixels, got {block_px}")
    # GeoBox slicing does not clip to its shape, so edge blocks are clipped here.
    blocks = {}
    for row, y0 in enumerate(range(0, geobox.height, block_px)):
        y1 = min(y0 + block_px, geobox.height)
        for column, x0 in enumerate(range(0, geobox.width, block_px)):
            x1 = min(x0 + block_px, geobox.width)
            blocks[(row, column)] = geobox[y0:y1, x0:x1]
    return blocks
