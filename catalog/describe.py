"""Turn a STAC item into a :class:`~catalog.scene.SceneDescription`.

Item metadata wins where present (``eo:bands``, ``gsd``, ``raster:bands``,
``proj:*``); the sensor tables of :mod:`catalog.sensors` fill the gaps.
Sentinel-2 offsets follow :mod:`catalog.radiometry`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import posixpath
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urljoin, urlparse

import pystac
import shapely.geometry

from catalog.radiometry import find_processing_baseline, offset_removed_by_catalog, sentinel2_scale_offset
from catalog.scene import BandInfo, SceneDescription
from catalog.sensors import SENTINEL2_MSI, Sensor, SensorBand, find_sensor, normalize_platform

logger = logging.getLogger(__name__)

MAP_PROJECTED_PROPERTY = "fleximo:map_projected"

_SKIPPED_ROLES = {"thumbnail", "overview", "metadata", "visual", "tiles"}
# Wavelengths above this are taken to be in nm, because thermal bands end near 12.5 µm.
_MAX_WAVELENGTH_UM = 20.0
_S2_ID = re.compile(r"^S2([ABC])_", re.IGNORECASE)
_RESOLUTION_SUFFIX = re.compile(r"_\d+m$", re.IGNORECASE)


def describe_item(item: pystac.Item | Mapping[str, Any], *, bands: Sequence[str] | None = None) -> SceneDescription:
    """Describe one scene: sensor, bands with wavelengths, GSD, nodata and scale/offset.

    Parameters
    ----------
    item
        A STAC item, as :class:`pystac.Item` or GeoJSON dict.
    bands
        Band names to select, as the sensor names them (``"B04"``) or by
        their catalog aliases (``"red"``), in the order the model expects.
        ``None`` selects every spectral band of the sensor table found in the
        item, in wavelength order, followed by its classification and quality
        layers (e.g. Sentinel-2 ``SCL``). Panchromatic bands are selected only
        by name.

    Returns
    -------
    SceneDescription
        Reflectance bands first, then categorical bands (role
        ``"classification"``/``"quality"``, wavelength ``None``). Hrefs are
        absolute; ``reflectance = stored_value * scale + offset``.

    Raises
    ------
    ValueError
        On an unknown sensor or band, a wavelength outside 0.3-20 µm, or a
        band whose reflectance scale/offset cannot be decided.
    """
    item_dict, self_href = _item_dict(item)
    properties = item_dict.get("properties") or {}
    item_id = str(item_dict.get("id"))
    sensor, platform, instrument = _resolve_sensor(item_dict)

    candidates = _band_assets(item_dict, sensor)
    selected = _select_bands(item_id, sensor, candidates, bands)

    baseline = None
    if sensor is SENTINEL2_MSI:
        hrefs = [asset.get("href", "") for asset in (item_dict.get("assets") or {}).values()]
        baseline = find_processing_baseline(properties, [item_id, *hrefs])
        if properties.get("earthsearch:boa_offset_applied") is False and baseline and baseline >= "04.00":
            # NOTE: such Earth Search items exist with either raw or harmonized COG values,
            # and nothing in the metadata distinguishes them; the flag is followed.
            logger.warning(
                "item %s: baseline %s but earthsearch:boa_offset_applied is false; its COG values may "
                "already be harmonized, so check its reflectance against another source", item_id, baseline,
            )

    band_infos = tuple(
        _band_info(item_id, sensor, table_band, asset_key, asset, index, self_href, baseline, properties)
        for table_band, asset_key, asset, index in selected
    )
    band_infos = tuple(b for b in band_infos if b.role == "reflectance") + tuple(
        b for b in band_infos if b.role != "reflectance"
    )
    if not any(b.role == "reflectance" for b in band_infos):
        raise ValueError(f"item {item_id!r} has no spectral band among the selected bands {[b.name for b in band_infos]}")

    geometry = item_dict.get("geometry")
    bbox = item_dict.get("bbox") or (shapely.geometry.shape(geometry).bounds if geometry else None)
    if geometry is None or bbox is None:
        raise ValueError(f"item {item_id!r} has no geometry; a scene needs a footprint")

    return SceneDescription(
        item_id=item_id,
        collection=str(item_dict.get("collection") or ""),
        platform=platform,
        instrument=instrument,
        datetime_utc=item_datetime(item_dict),
        bbox_lonlat=(float(bbox[0]), float(bbox[1]), float(bbox[-2]), float(bbox[-1])),
        geometry_json=json.dumps(geometry, sort_keys=True),
        epsg=_item_epsg(item_dict, [asset for _, _, asset, _ in selected]),
        bands=band_infos,
        cloud_cover_pct=cloud_cover(properties),
        map_projected=bool(properties.get(MAP_PROJECTED_PROPERTY, True)),
        processing_baseline=baseline,
    )


def item_datetime(item_dict: Mapping[str, Any]) -> datetime:
    """Return the item's ``datetime`` (or ``start_datetime``) as an aware UTC datetime."""
    properties = item_dict.get("properties") or {}
    text = properties.get("datetime") or properties.get("start_datetime")
    if not text:
        raise ValueError(f"item {item_dict.get('id')!r} has neither datetime nor start_datetime")
    value = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def cloud_cover(properties: Mapping[str, Any]) -> float | None:
    """Return ``eo:cloud_cover`` in percent, or ``None`` when missing or outside 0-100."""
    value = properties.get("eo:cloud_cover")
    if value is None:
        return None
    value = float(value)
    if not 0.0 <= value <= 100.0 or math.isnan(value):
        return None
    return value


def _item_dict(item: pystac.Item | Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    if isinstance(item, pystac.Item):
        return item.to_dict(transform_hrefs=False, include_self_link=True), item.get_self_href()
    if not isinstance(item, Mapping) or item.get("type") != "Feature":
        raise ValueError(f"expected a STAC item (pystac.Item or GeoJSON Feature dict), got {type(item).__name__}")
    self_href = next((link.get("href") for link in item.get("links") or [] if link.get("rel") == "self"), None)
    return dict(item), self_href


def _resolve_sensor(item_dict: Mapping[str, Any]) -> tuple[Sensor, str, str]:
    properties = item_dict.get("properties") or {}
    platform = normalize_platform(str(properties.get("platform") or ""))
    instruments = [str(i).lower() for i in properties.get("instruments") or []]

    # Some catalogs leave out platform/instruments; a Sentinel-2 id still names the unit.
    match = _S2_ID.match(str(item_dict.get("id", "")))
    if not platform and match:
        platform = f"sentinel-2{match.group(1).lower()}"
    if not instruments and platform.startswith("sentinel-2"):
        instruments = ["msi"]

    try:
        sensor = find_sensor(platform, tuple(instruments))
    except KeyError as error:
        raise ValueError(f"item {item_dict.get('id')!r}: {error.args[0]}") from None
    instrument = next(i for i in instruments if i in sensor.instruments)
    return sensor, platform, instrument


def _band_assets(item_dict: Mapping[str, Any], sensor: Sensor) -> dict[str, tuple[SensorBand, str, dict, int]]:
    """Map sensor band names to the best asset containing them: (band, asset key, asset, 1-based index)."""
    found: dict[str, tuple[tuple[int, ...], tuple[SensorBand, str, dict, int]]] = {}
    for key, asset in (item_dict.get("assets") or {}).items():
        roles = set(asset.get("roles") or [])
        # True-colour composites (TCI) are 8-bit renderings, not reflectance.
        if roles & _SKIPPED_ROLES or key.lower().startswith(("visual", "tci")):
            continue
        eo_bands = asset.get("eo:bands") or asset.get("bands") or []

        if len(eo_bands) > 1:
            matches = [(sensor.find_band(str(b.get("name", ""))), i + 1) for i, b in enumerate(eo_bands)]
        else:
            table_band = sensor.find_band(str(eo_bands[0].get("name", ""))) if eo_bands else None
            matches = [(table_band or sensor.find_band(key) or sensor.find_band(_RESOLUTION_SUFFIX.sub("", key)), 1)]

        for table_band, index in matches:
            if table_band is None:
                continue
            # Prefer single-band assets, then cloud-optimized GeoTIFFs over JPEG 2000 copies,
            # then the finest of several resolutions (CDSE lists B04_10m, B04_20m, B04_60m).
            media_type = str(asset.get("type", ""))
            gsd = _raster_fields(asset, index).get("spatial_resolution") or asset.get("gsd") or float("inf")
            rank = (len(eo_bands) > 1, key.lower().endswith("-jp2") or "jp2" in media_type, float(gsd))
            if table_band.name not in found or rank < found[table_band.name][0]:
                found[table_band.name] = (rank, (table_band, key, asset, index))
    return {name: entry for name, (_, entry) in found.items()}


def _select_bands(
    item_id: str,
    sensor: Sensor,
    candidates: Mapping[str, tuple[SensorBand, str, dict, int]],
    requested: Sequence[str] | None,
) -> list[tuple[SensorBand, str, dict, int]]:
    if requested is None:
        return [candidates[b.name] for b in sensor.bands if b.name in candidates and b.default]
    if isinstance(requested, str):
        raise ValueError(f"bands must be a sequence of band names, got the string {requested!r}")

    selected = []
    for name in requested:
        table_band = sensor.find_band(name)
        if table_band is None or table_band.name not in candidates:
            available = ", ".join(candidates) or "none"
            raise ValueError(f"item {item_id!r} ({sensor.key}) has no band {name!r}; bands available: {available}")
        selected.append(candidates[table_band.name])
    return selected


def _band_info(
    item_id: str,
    sensor: Sensor,
    table_band: SensorBand,
    asset_key: str,
    asset: Mapping[str, Any],
    index: int,
    self_href: str | None,
    baseline: str | None,
    properties: Mapping[str, Any],
) -> BandInfo:
    eo_bands = asset.get("eo:bands") or asset.get("bands") or []
    eo_band = eo_bands[index - 1] if len(eo_bands) >= index else {}
    raster_band = _raster_fields(asset, index)

    wavelength_um = None
    if table_band.role == "reflectance":
        wavelength_um = eo_band.get("center_wavelength", eo_band.get("eo:center_wavelength"))
        wavelength_um = table_band.wavelength_um if wavelength_um is None else float(wavelength_um)
        if not 0.3 <= wavelength_um <= _MAX_WAVELENGTH_UM:
            raise ValueError(
                f"item {item_id!r} band {table_band.name}: center_wavelength {wavelength_um} is not in µm "
                f"(expected 0.3-{_MAX_WAVELENGTH_UM}); STAC eo:bands wavelengths are micrometres, divide nm by 1000"
            )

    if table_band.role == "reflectance":
        scale, offset = _scale_offset(
            item_id, sensor, table_band, raster_band, baseline, properties, asset_key, asset
        )
    else:
        scale, offset = 1.0, 0.0

    nodata = raster_band.get("nodata", sensor.nodata)
    return BandInfo(
        name=table_band.name,
        asset_key=asset_key,
        href=_absolute_href(item_id, str(asset["href"]), self_href),
        wavelength_um=wavelength_um,
        gsd_m=_asset_gsd(asset, raster_band, table_band),
        scale=scale,
        offset=offset,
        nodata=None if nodata is None else float(nodata),
        role=table_band.role,
        band_index=index,
    )


def _raster_fields(asset: Mapping[str, Any], index: int) -> dict[str, Any]:
    """Return scale, offset, nodata and spatial_resolution of band ``index`` of an asset.

    Reads ``raster:bands`` (raster extension 1.x) or the STAC 1.1 ``bands``
    array with ``raster:``-prefixed fields, with asset-level ``nodata`` as fallback.
    """
    if asset.get("raster:bands"):
        entries, prefix = asset["raster:bands"], ""
    else:
        entries, prefix = asset.get("bands") or [], "raster:"
    entry = entries[index - 1] if len(entries) >= index else {}

    fields = {}
    for name in ("scale", "offset", "spatial_resolution"):
        value = entry.get(prefix + name, entry.get(name))
        if value is not None:
            fields[name] = value
    nodata = entry.get("nodata", asset.get("nodata"))
    if nodata is not None:
        fields["nodata"] = nodata
    return fields


def _scale_offset(
    item_id: str,
    sensor: Sensor,
    band: SensorBand,
    raster_band: Mapping[str, Any],
    baseline: str | None,
    properties: Mapping[str, Any],
    asset_key: str,
    asset: Mapping[str, Any],
) -> tuple[float, float]:
    declared_scale = raster_band.get("scale")
    declared_offset = raster_band.get("offset")

    if sensor is SENTINEL2_MSI:
        return sentinel2_scale_offset(
            item_id, band.name, declared_scale, declared_offset, baseline,
            offset_removed_by_catalog(properties, asset_key, asset),
        )

    if declared_scale is None and declared_offset is None:
        if sensor.radiometry == "dn":
            raise ValueError(
                f"item {item_id!r} ({sensor.key}) band {band.name} stores raw counts and declares no "
                "raster:bands scale/offset to reflectance; build the item with calibration coefficients "
                "(catalog.build_gaofen_items(..., calibration=...)) or add raster:bands scale/offset"
            )
        return sensor.scale, sensor.offset
    scale = 1.0 if declared_scale is None else float(declared_scale)
    return scale, 0.0 if declared_offset is None else float(declared_offset)


def _asset_gsd(asset: Mapping[str, Any], raster_band: Mapping[str, Any], band: SensorBand) -> float:
    if asset.get("gsd") is not None:
        return float(asset["gsd"])
    if raster_band.get("spatial_resolution") is not None:
        return float(raster_band["spatial_resolution"])
    transform = asset.get("proj:transform")
    if transform and len(transform) >= 6:
        return abs(float(transform[0]))
    return band.gsd_m


def _absolute_href(item_id: str, href: str, self_href: str | None) -> str:
    if urlparse(href).scheme in ("http", "https", "s3", "gs", "az", "abfs", "file") or os.path.isabs(href):
        return href
    if self_href is None:
        raise ValueError(
            f"item {item_id!r} has the relative asset href {href!r} and no self link to resolve it against; "
            "load the item from its file (pystac.Item.from_file) or make the hrefs absolute"
        )
    if urlparse(self_href).scheme in ("http", "https", "s3", "gs", "az"):
        return urljoin(self_href, href)
    base = self_href.removeprefix("file://")
    return posixpath.normpath(posixpath.join(posixpath.dirname(os.path.abspath(base)), href))


def _item_epsg(item_dict: Mapping[str, Any], assets: Sequence[Mapping[str, Any]]) -> int | None:
    for source in (item_dict.get("properties") or {}, *assets):
        if source.get("proj:epsg") is not None:
            return int(source["proj:epsg"])
        code = source.get("proj:code")
        if isinstance(code, str) and code.upper().startswith("EPSG:"):
            return int(code.split(":", 1)[1])
    return None
