"""Plain-text table of scenes for the command line."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pyproj
import shapely.geometry

from catalog.scene import SceneDescription

_GEOD = pyproj.Geod(ellps="WGS84")
_HEADER = ("date (UTC)", "cloud %", "sensor", "GSD m", "area km²", "item id")


def footprint_area_km2(scene: SceneDescription) -> float:
    """Return the geodesic area of the scene footprint on the WGS84 ellipsoid, in km²."""
    geometry = shapely.geometry.shape(json.loads(scene.geometry_json))
    area_m2, _ = _GEOD.geometry_area_perimeter(geometry)
    return abs(area_m2) / 1.0e6


def format_scene_table(scenes: Sequence[SceneDescription]) -> str:
    """Format scenes as an aligned text table, one row per scene.

    Columns: acquisition date and time (UTC, to the minute), cloud cover in
    percent (``-`` when unknown), sensor as platform/instrument, finest GSD of
    the reflectance bands in metres, footprint area in km², and the item id.
    ``L1A`` after the sensor marks imagery that is not map-projected. Rows
    keep the order given.
    """
    rows = [_HEADER]
    for scene in scenes:
        cloud = "-" if scene.cloud_cover_pct is None else f"{scene.cloud_cover_pct:.1f}"
        sensor = f"{scene.platform}/{scene.instrument}" + ("" if scene.map_projected else " L1A")
        rows.append(
            (
                scene.datetime_utc.strftime("%Y-%m-%d %H:%M"),
                cloud,
                sensor,
                f"{scene.finest_gsd_m:g}",
                f"{footprint_area_km2(scene):,.0f}",
                scene.item_id,
            )
        )

    widths = [max(len(row[column]) for row in rows) for column in range(len(_HEADER))]
    numeric = {1, 3, 4}
    lines = []
    for row in rows:
        cells = [cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * width for width in widths))
    lines.append(f"{len(scenes)} scene{'s' if len(scenes) != 1 else ''}")
    return "\n".join(lines)
