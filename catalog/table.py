"""Plain-text table of scenes for the command line."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import pyproj
import pystac
import shapely.geometry

from catalog.describe import MAP_PROJECTED_PROPERTY, cloud_cover, describe_item, item_datetime
from catalog.scene import SceneDescription

logger = logging.getLogger(__name__)

_GEOD = pyproj.Geod(ellps="WGS84")
_HEADER = ("date (UTC)", "cloud %", "sensor", "GSD m", "area km²", "item id")


@dataclasses.dataclass(frozen=True)
class _Row:
    item_id: str
    datetime_utc: datetime
    cloud_cover_pct: float | None
    sensor: str
    gsd_m: float | None
    geometry: dict[str, Any]


def footprint_area_km2(scene: SceneDescription) -> float:
    """Return the geodesic area of the scene footprint on the WGS84 ellipsoid, in km²."""
    return _geodesic_area_km2(json.loads(scene.geometry_json))


def _geodesic_area_km2(geometry: Mapping[str, Any]) -> float:
    area_m2, _ = _GEOD.geometry_area_perimeter(shapely.geometry.shape(geometry))
    return abs(area_m2) / 1.0e6


def format_scene_table(scenes: Sequence[SceneDescription | pystac.Item | Mapping[str, Any]]) -> str:
    """Format scenes as an aligned text table, one row per scene.

    Columns: acquisition date and time (UTC, to the minute), cloud cover in
    percent (``-`` when unknown), sensor as platform/instrument, finest GSD of
    the reflectance bands in metres, footprint area in km², and the item id.
    ``L1A`` after the sensor marks imagery that is not map-projected. Rows
    keep the order given.

    Scenes may also be given as STAC items (as returned by
    :func:`catalog.search_items`). Items that :func:`catalog.describe_item`
    rejects for model input, such as uncalibrated Gaofen Level-1A items, are
    still listed, with the finest GSD among the item's data assets.
    """
    rows = [_HEADER]
    for scene in scenes:
        row = _row(scene)
        cloud = "-" if row.cloud_cover_pct is None else f"{row.cloud_cover_pct:.1f}"
        rows.append(
            (
                row.datetime_utc.strftime("%Y-%m-%d %H:%M"),
                cloud,
                row.sensor,
                "-" if row.gsd_m is None else f"{row.gsd_m:g}",
                f"{_geodesic_area_km2(row.geometry):,.0f}",
                row.item_id,
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


def _row(scene: SceneDescription | pystac.Item | Mapping[str, Any]) -> _Row:
    if not isinstance(scene, SceneDescription):
        try:
            scene = describe_item(scene)
        except ValueError as error:
            logger.debug("listing %s from its metadata only: %s", _item_id(scene), error)
            return _row_from_metadata(scene)
    sensor = f"{scene.platform}/{scene.instrument}" + ("" if scene.map_projected else " L1A")
    return _Row(
        item_id=scene.item_id,
        datetime_utc=scene.datetime_utc,
        cloud_cover_pct=scene.cloud_cover_pct,
        sensor=sensor,
        gsd_m=scene.finest_gsd_m,
        geometry=json.loads(scene.geometry_json),
    )


def _item_id(item: pystac.Item | Mapping[str, Any]) -> str:
    return item.id if isinstance(item, pystac.Item) else str(item.get("id"))


def _row_from_metadata(item: pystac.Item | Mapping[str, Any]) -> _Row:
    item_dict = item.to_dict(transform_hrefs=False) if isinstance(item, pystac.Item) else dict(item)
    properties = item_dict.get("properties") or {}
    instruments = "/".join(properties.get("instruments") or []) or "?"
    projected = properties.get(MAP_PROJECTED_PROPERTY, True)
    sensor = f"{str(properties.get('platform') or '?').lower()}/{instruments}" + ("" if projected else " L1A")

    asset_gsds = [
        float(asset["gsd"])
        for asset in (item_dict.get("assets") or {}).values()
        if asset.get("gsd") is not None and "data" in (asset.get("roles") or [])
    ]
    gsd_m = min(asset_gsds) if asset_gsds else properties.get("gsd")
    return _Row(
        item_id=str(item_dict.get("id")),
        datetime_utc=item_datetime(item_dict),
        cloud_cover_pct=cloud_cover(properties),
        sensor=sensor,
        gsd_m=None if gsd_m is None else float(gsd_m),
        geometry=item_dict["geometry"],
    )
