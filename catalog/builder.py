"""Build a local static STAC catalog from raster files on disk.

One item per scene folder with one asset per band file. Band names come
from the file names (``B04.tif``, ``s2_B04.jp2``, ``T18SVG_..._B04_10m.tif``),
wavelengths and names from the sensor tables, the grid from the files. An
item JSON that already describes the scene (a GeoJSON Feature file in the
folder) is reused with its hrefs rewritten to the local files, because it
carries what files cannot: processing baseline, cloud cover, angles.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pystac
import rasterio
import rasterio.warp
import shapely.geometry
import shapely.ops

from catalog.describe import item_datetime
from catalog.query import parse_datetime_range
from catalog.safe import find_product_metadata, product_properties, resolution_in_name
from catalog.sensors import SENSORS, Sensor, find_sensor, normalize_platform

logger = logging.getLogger(__name__)

RASTER_SUFFIXES = (".tif", ".tiff", ".jp2")
EXTENSIONS = (
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
)
_DATE_IN_NAME = re.compile(r"(?<!\d)(20\d{2})(\d{2})(\d{2})(?!\d)")
_S2_UNIT_IN_NAME = re.compile(r"(?:^|_)S2([ABC])(?:_|$)", re.IGNORECASE)


def build_local_catalog(
    sources: Sequence[Path],
    out_dir: Path,
    *,
    sensor: str | None = None,
    collection: str = "local",
    datetime: str | None = None,
    offset: float | None = None,
    properties: Mapping[str, Any] | None = None,
    scale: float | None = None,
) -> list[pystac.Item]:
    """Make STAC items from local scene folders and write them as a static catalog.

    Parameters
    ----------
    sources
        Scene folders, each with one raster file per band (GeoTIFF or
        JPEG 2000; the format is read from the file, not its name). A
        Sentinel-2 ``.SAFE`` folder is read with its product metadata, which
        gives platform, time, baseline, cloud cover and per-band offsets.
    out_dir
        Folder that receives the static catalog (see :func:`write_local_catalog`).
        Asset hrefs are absolute paths to the source files.
    sensor
        Platform (``"sentinel-2a"``, ``"landsat-8"``, ``"gf2"``) or sensor table
        key (``"sentinel-2-msi"``). ``None`` takes it from an item JSON in the
        folder or an ``S2A_``-style folder name.
    collection
        Collection id written into the items.
    datetime
        Acquisition time (RFC 3339 or ``YYYY-MM-DD``, UTC) for folders whose
        item JSON or name does not give it.
    offset
        Reflectance offset of the stored values (``reflectance = value * scale
        + offset``; ``-0.1`` for Sentinel-2 from processing baseline 04.00,
        ``0.0`` before). ``None`` takes it from the item JSON or from
        ``s2:processing_baseline`` in ``properties``; other sensors without
        either need it given.
    properties
        Extra item properties, e.g. ``{"s2:processing_baseline": "02.01"}``.
    scale
        Reflectance scale of the stored values, used with ``offset``;
        ``None`` means the sensor table's (``1e-4`` for Sentinel-2).

    Returns
    -------
    list of pystac.Item
        One item per source, saved under ``out_dir``.

    Raises
    ------
    FileNotFoundError
        When a source folder is missing or contains no band file.
    ValueError
        When the sensor, acquisition time or band of a file cannot be
        determined.
    """
    items = [
        _build_item(Path(source), sensor=sensor, collection=collection, datetime_text=datetime,
                    offset=offset, scale=scale, extra_properties=dict(properties or {}))
        for source in sources
    ]
    write_local_catalog(items, Path(out_dir), catalog_id=f"{collection}-catalog",
                        description=f"Local scenes of collection {collection}")
    return items


def write_local_catalog(items: Sequence[pystac.Item], out_dir: Path, *, catalog_id: str, description: str) -> Path:
    """Write items as a static catalog under ``out_dir``; return the path of its ``catalog.json``.

    Layout: ``catalog.json`` links one ``<collection>/collection.json`` per
    collection id of the items, which links ``<collection>/<item id>/<item id>.json``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    catalog = pystac.Catalog(id=catalog_id, description=description)
    by_collection: dict[str, list[pystac.Item]] = {}
    for item in items:
        by_collection.setdefault(item.collection_id or "items", []).append(item)
    for collection_id, members in by_collection.items():
        collection = pystac.Collection(
            id=collection_id,
            description=f"{description}: collection {collection_id}",
            extent=pystac.Extent.from_items(members),
            license="other",
        )
        collection.add_items(members)
        catalog.add_child(collection)
    catalog.normalize_hrefs(str(out_dir.resolve()))
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    logger.info("wrote %d items to the local catalog %s", len(items), out_dir)
    return out_dir / "catalog.json"


def resolve_sensor_name(name: str) -> tuple[Sensor, str]:
    """Return the sensor table and platform for a platform name or sensor key."""
    key = name.strip().lower()
    if key in SENSORS:
        table = SENSORS[key]
        return table, table.platforms[0]
    for table in SENSORS.values():
        if normalize_platform(key) in table.platforms:
            return find_sensor(key, table.instruments), normalize_platform(key)
    raise ValueError(
        f"unknown sensor {name!r}; expected a platform ({', '.join(p for s in SENSORS.values() for p in s.platforms)}) "
        f"or a sensor key ({', '.join(SENSORS)})"
    )


def _build_item(
    folder: Path,
    *,
    sensor: str | None,
    collection: str,
    datetime_text: str | None,
    offset: float | None,
    scale: float | None,
    extra_properties: dict[str, Any],
) -> pystac.Item:
    if not folder.is_dir():
        raise FileNotFoundError(f"scene folder {str(folder)!r} does not exist; pass folders of per-band raster files")
    template = _find_item_json(folder)
    product = find_product_metadata(folder) if template is None else None
    properties: dict[str, Any] = copy.deepcopy(template["properties"]) if template else {}
    if product is not None:
        properties.update(product_properties(product))
    properties.update(extra_properties)

    if sensor is not None:
        table, platform = resolve_sensor_name(sensor)
        if not properties.get("platform", "").lower().startswith(platform):
            properties["platform"] = platform
    elif properties.get("platform"):
        table = find_sensor(properties["platform"], properties.get("instruments") or ("msi",))
    else:
        unit = _S2_UNIT_IN_NAME.search(folder.name)
        if unit is None:
            raise ValueError(
                f"cannot tell the sensor of {folder}: no item JSON, no 'S2A_'-style name; pass sensor='sentinel-2a' or similar"
            )
        table, properties["platform"] = SENSORS["sentinel-2-msi"], f"sentinel-2{unit.group(1).lower()}"
    properties.setdefault("instruments", [table.instruments[0]])

    band_files = _band_files(folder, table, recursive=product is not None)
    acquired = _acquisition_time(folder, template, datetime_text, product.start_utc if product else None)
    properties["datetime"] = acquired.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    band_scale, band_offset = _radiometry(folder, table, template, offset, scale, properties)

    assets: dict[str, pystac.Asset] = {}
    footprints = []
    epsg = None
    for band_name, path in band_files.items():
        radiometry = (band_scale, band_offset)
        if product is not None and offset is None and band_name in product.wavelengths_um:
            # The product's own RADIO_ADD_OFFSET/BOA_ADD_OFFSET, band by band.
            radiometry = product.scale_offset(band_name)
        asset, footprint, asset_epsg = _band_asset(table, band_name, path, *radiometry)
        key = _template_asset_key(template, table, band_name)
        if key is not None:
            _copy_declared_radiometry(template["assets"][key], asset)
        assets[key or band_name] = asset
        footprints.append(footprint)
        epsg = epsg or asset_epsg
    properties["proj:epsg"] = epsg

    geometry = template["geometry"] if template else _footprint_lonlat(footprints)
    if template is not None:
        item_id = template["id"]
    elif product is not None and product.product_uri:
        item_id = product.product_uri.removesuffix(".SAFE")
    else:
        item_id = _item_id(folder, acquired)
    item = pystac.Item(
        id=item_id,
        geometry=geometry,
        bbox=list(shapely.geometry.shape(geometry).bounds),
        datetime=acquired,
        properties=properties,
        collection=collection,
        stac_extensions=list(EXTENSIONS),
    )
    for key, asset in assets.items():
        item.add_asset(key, asset)
    logger.info("built item %s from %d band files in %s", item_id, len(assets), folder)
    return item


def _footprint_lonlat(footprints: Sequence[tuple[Any, shapely.geometry.Polygon]]) -> dict[str, Any]:
    """Return the box around all band extents, in EPSG:4326, as GeoJSON.

    Band grids of one scene can differ by a pixel at the edges (60 m vs 10 m),
    so the union of their boxes is taken in the native CRS, densified so that
    its edges follow the projection, then transformed.
    """
    crs = footprints[0][0]
    extent = shapely.geometry.box(*shapely.ops.unary_union([box for _, box in footprints]).bounds)
    if crs is None:
        raise ValueError("band files have no CRS; a local catalog needs georeferenced rasters")
    densified = extent.segmentize(max(extent.bounds[2] - extent.bounds[0], extent.bounds[3] - extent.bounds[1]) / 4)
    geometry = rasterio.warp.transform_geom(crs, "EPSG:4326", shapely.geometry.mapping(densified))
    return json.loads(json.dumps(geometry))


def _find_item_json(folder: Path) -> dict[str, Any] | None:
    for file in sorted(folder.glob("*.json")):
        data = json.loads(file.read_text(encoding="utf-8"))
        if isinstance(data, dict) and data.get("type") == "Feature":
            return data
    return None


def _band_files(folder: Path, table: Sensor, *, recursive: bool = False) -> dict[str, Path]:
    """Map band names to their files; SAFE folders are searched recursively, keeping the finest resolution."""
    found: dict[str, Path] = {}
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    for path in sorted(candidates):
        if path.suffix.lower() not in RASTER_SUFFIXES or "QI_DATA" in path.parts:
            continue
        band = next((table.find_band(token) for token in reversed(path.stem.split("_")) if table.find_band(token)), None)
        if band is None:
            logger.info("skipping %s: its name does not contain a %s band name", path.name, table.key)
            continue
        if band.name in found:
            previous, current = resolution_in_name(found[band.name]), resolution_in_name(path)
            if previous is None or current is None:
                raise ValueError(
                    f"{folder} contains two files for band {band.name}: {found[band.name].name} and {path.name}; keep one"
                )
            if current >= previous:
                continue
        found[band.name] = path
    if not found:
        raise FileNotFoundError(
            f"no band files in {folder}; expected rasters named after {table.key} bands, e.g. {table.bands[1].name}.tif"
        )
    return {band.name: found[band.name] for band in table.bands if band.name in found}


def _acquisition_time(
    folder: Path, template: Mapping[str, Any] | None, datetime_text: str | None, product_start: datetime | None
) -> datetime:
    if datetime_text is not None:
        start, end = parse_datetime_range(datetime_text)
        if start is None or end is None or "/" in datetime_text:
            raise ValueError(f"invalid acquisition time {datetime_text!r}; expected one instant, not a range")
        return start
    if template is not None:
        return item_datetime(template)
    if product_start is not None:
        return product_start
    match = _DATE_IN_NAME.search(folder.name)
    if match:
        return datetime(int(match.group(1)), int(match.group(2)), int(match.group(3)), tzinfo=timezone.utc)
    raise ValueError(f"cannot tell when the scene in {folder} was acquired; pass datetime='YYYY-MM-DD' or an RFC 3339 time")


def _radiometry(
    folder: Path,
    table: Sensor,
    template: Mapping[str, Any] | None,
    offset: float | None,
    scale: float | None,
    properties: Mapping[str, Any],
) -> tuple[float | None, float | None]:
    """Return the (scale, offset) to declare, or (None, None) to leave it to describe_item."""
    if offset is not None:
        return (table.scale if scale is None else float(scale)), float(offset)
    if scale is not None:
        raise ValueError(
            f"scale {scale} given without an offset for {folder}; give both (--scale and --offset, or scale= and "
            "offset= in Python), with an offset of 0 if there is none"
        )
    if template is not None or properties.get("s2:processing_baseline") or table.radiometry == "dn":
        return None, None
    if table.key == "sentinel-2-msi":
        raise ValueError(
            f"cannot tell the radiometric offset of the Sentinel-2 files in {folder}: give --offset 0 "
            "(processing baseline before 04.00) or --offset -0.1 (04.00 and later); in Python, offset=0.0 or "
            "offset=-0.1, or properties={'s2:processing_baseline': 'MM.mm'}"
        )
    # Files alone do not show whether they contain Level-1 or Level-2 values, whose scales differ.
    raise ValueError(
        f"cannot tell the reflectance scale/offset of the {table.key} files in {folder}: give both, e.g. "
        f"--scale {table.scale} --offset {table.offset} (scale= and offset= in Python) for the sensor's surface "
        "reflectance product"
    )


def _band_asset(
    table: Sensor, band_name: str, path: Path, scale: float | None, offset: float | None
) -> tuple[pystac.Asset, Any, int | None]:
    band = table.find_band(band_name)
    assert band is not None  # _band_files only returns table bands
    with rasterio.open(path) as dataset:
        transform = dataset.transform
        shape = [dataset.height, dataset.width]
        epsg = dataset.crs.to_epsg() if dataset.crs else None
        nodata = dataset.nodata if dataset.nodata is not None else table.nodata
        dtype = dataset.dtypes[0]
        footprint = shapely.geometry.box(*dataset.bounds)
        crs = dataset.crs
        driver = dataset.driver

    gsd_m = abs(transform.a)
    raster_band: dict[str, Any] = {"data_type": dtype, "spatial_resolution": gsd_m}
    if nodata is not None:
        raster_band["nodata"] = nodata
    extra: dict[str, Any] = {
        "gsd": gsd_m,
        "proj:shape": shape,
        "proj:transform": list(transform)[:6],
        "raster:bands": [raster_band],
    }
    if band.role == "reflectance":
        eo_band = {"name": band.name, "center_wavelength": band.wavelength_um}
        if band.fwhm_um is not None:
            eo_band["full_width_half_max"] = band.fwhm_um
        extra["eo:bands"] = [eo_band]
        if scale is not None:
            raster_band.update(scale=scale, offset=offset)
    media_type = pystac.MediaType.GEOTIFF if driver == "GTiff" else pystac.MediaType.JPEG2000
    roles = ["data", "reflectance"] if band.role == "reflectance" else ["data"]
    asset = pystac.Asset(href=str(path.resolve()), media_type=media_type, title=band.name, roles=roles, extra_fields=extra)
    return asset, (crs, footprint), epsg


def _template_asset_key(template: Mapping[str, Any] | None, table: Sensor, band_name: str) -> str | None:
    """Return the asset key the item JSON uses for a band (``"red"`` for B04), to keep its naming."""
    if template is None:
        return None
    for key, asset in (template.get("assets") or {}).items():
        if key.endswith("-jp2") or "visual" in (asset.get("roles") or []):
            continue
        eo_bands = asset.get("eo:bands") or []
        names = [key] + ([eo_bands[0].get("name", "")] if len(eo_bands) == 1 else [])
        if any((band := table.find_band(name)) is not None and band.name == band_name for name in names):
            return key
    return None


def _copy_declared_radiometry(template_asset: Mapping[str, Any], asset: pystac.Asset) -> None:
    declared = (template_asset.get("raster:bands") or [{}])[0]
    target = asset.extra_fields["raster:bands"][0]
    for field in ("scale", "offset"):
        if field in declared and field not in target:
            target[field] = declared[field]


def _item_id(folder: Path, acquired: datetime) -> str:
    date_text = acquired.strftime("%Y%m%d")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", folder.resolve().name)
    return name if date_text in name else f"{name}_{date_text}"
