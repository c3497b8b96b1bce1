"""Turn GF-1/GF-2 Level-1A deliveries into STAC items.

A delivery folder holds, per image, the GeoTIFF, its metadata XML and its
RPC file (``.rpb``): ``<id>-MSS1.*`` and ``<id>-PAN1.*`` for PMS products,
``<id>.*`` for WFV. Level-1A images are not map-projected, so the items mark them
(``fleximo:map_projected`` false, ``proj:epsg`` null) and carry the RPC file
as an asset for orthorectification.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pystac
import shapely.geometry
import shapely.geometry.polygon

from catalog.builder import EXTENSIONS, write_local_catalog
from catalog.describe import MAP_PROJECTED_PROPERTY
from catalog.gaofen_metadata import GaofenImageMetadata, read_gaofen_xml
from catalog.sensors import Sensor, SensorBand, find_sensor

logger = logging.getLogger(__name__)

VIEW_EXTENSION = "https://stac-extensions.github.io/view/v1.0.0/schema.json"
SAT_EXTENSION = "https://stac-extensions.github.io/sat/v1.0.0/schema.json"
_IMAGE_SUFFIXES = (".tiff", ".tif", ".TIFF", ".TIF")


@dataclasses.dataclass(frozen=True)
class RadianceCalibration:
    """Absolute calibration of one band: ``radiance = gain * DN + bias``.

    ``gain`` (W m⁻² sr⁻¹ µm⁻¹ per DN) and ``bias`` (W m⁻² sr⁻¹ µm⁻¹) are
    published yearly per satellite and sensor by the data provider. ``esun``
    is the band's mean exoatmospheric solar irradiance in W m⁻² µm⁻¹.
    """

    gain: float
    bias: float
    esun: float


def read_calibration(path: str | Path) -> dict[str, list[RadianceCalibration]]:
    """Read absolute calibration coefficients from a JSON file.

    The file maps image kinds to one entry per band, in band order::

        {"MSS": [{"gain": 0.1585, "bias": 0.0, "esun": 1966.8}, ...],
         "PAN": [{"gain": 0.163, "bias": 0.0, "esun": 1361.4}]}

    Raises
    ------
    ValueError
        When the file is not valid JSON or an entry lacks ``gain``, ``bias``
        or ``esun``; the message names the file and the entry.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: invalid JSON ({error}); expected calibration coefficients") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object mapping 'MSS'/'PAN' to lists of coefficients")

    calibration: dict[str, list[RadianceCalibration]] = {}
    for kind, entries in data.items():
        if kind not in ("MSS", "PAN") or not isinstance(entries, list):
            raise ValueError(f"{path}: invalid key {kind!r} or value; expected 'MSS' or 'PAN' with a list of bands")
        calibration[kind] = []
        for number, entry in enumerate(entries, start=1):
            try:
                calibration[kind].append(
                    RadianceCalibration(gain=float(entry["gain"]), bias=float(entry["bias"]), esun=float(entry["esun"]))
                )
            except (KeyError, TypeError, ValueError):
                raise ValueError(
                    f"{path}: {kind} band {number} entry {entry!r} is invalid; expected numbers gain, bias and esun"
                ) from None
    return calibration


def build_gaofen_items(
    delivery_dirs: Sequence[Path],
    out_dir: Path,
    *,
    collection: str = "gaofen-l1a",
    calibration: Mapping[str, Sequence[RadianceCalibration]] | None = None,
) -> list[pystac.Item]:
    """Make one STAC item per Gaofen Level-1A delivery and write them as a local catalog.

    Parameters
    ----------
    delivery_dirs
        Delivery folders with the images' ``.xml`` metadata, ``.rpb`` RPC
        files and ``.tiff`` images. A missing image is logged, and its asset
        still points where the image belongs.
    out_dir
        Folder that receives ``catalog.json`` and the item files.
    collection
        Collection id written into the items.
    calibration
        Per image kind (``"MSS"``, ``"PAN"``) one :class:`RadianceCalibration`
        per band, in band order. With it, ``raster:bands`` declares the
        scale/offset from DN to top-of-atmosphere reflectance for this scene
        (sun elevation and Earth-Sun distance of the acquisition). Without
        it, bands stay raw counts and :func:`catalog.describe_item` rejects
        them for model input.

    Returns
    -------
    list of pystac.Item
        One item per delivery, in the order given.

    Raises
    ------
    FileNotFoundError
        When a folder is missing or contains no product XML.
    ValueError
        On unreadable metadata or calibration that does not match the bands.
    """
    items = [_delivery_item(Path(folder), collection, calibration or {}) for folder in delivery_dirs]
    write_local_catalog(items, Path(out_dir), catalog_id=f"{collection}-catalog",
                        description="Gaofen Level-1A deliveries (not map-projected; RPCs as assets)")
    return items


def _delivery_item(folder: Path, collection: str, calibration: Mapping[str, Sequence[RadianceCalibration]]) -> pystac.Item:
    if not folder.is_dir():
        raise FileNotFoundError(f"Gaofen delivery folder {str(folder)!r} does not exist")
    xml_files = sorted(p for p in folder.glob("*.xml") if not p.name.endswith((".aux.xml", "_thumb.xml")))
    if not xml_files:
        raise FileNotFoundError(f"no product metadata XML in {folder}; expected <id>-MSS1.xml/<id>-PAN1.xml or <id>.xml")

    images = {_image_kind(xml): (xml, read_gaofen_xml(xml)) for xml in xml_files}
    primary_kind = "MSS" if "MSS" in images else next(iter(images))
    primary = images[primary_kind][1]
    sensor = find_sensor(primary.satellite, primary.sensor)
    item_id = _item_id(images[primary_kind][0])

    footprint = shapely.geometry.polygon.orient(shapely.geometry.Polygon(primary.corners_lonlat), sign=1.0)
    properties: dict[str, Any] = {
        "start_datetime": _stac_time(min(meta.start_utc for _, meta in images.values())),
        "end_datetime": _stac_time(max(meta.end_utc for _, meta in images.values())),
        "platform": primary.satellite.lower(),
        "instruments": [sensor.instruments[0]],
        "constellation": "gaofen",
        "gaofen:sensor_id": primary.sensor,
        "processing:level": "L1A",
        "gsd": min(meta.gsd_m for _, meta in images.values()),
        "proj:epsg": None,
        MAP_PROJECTED_PROPERTY: False,
    }
    if primary.product_id:
        properties["gaofen:product_id"] = primary.product_id
    if primary.orbit is not None:
        properties["sat:absolute_orbit"] = primary.orbit
    if primary.cloud_cover_pct is not None:
        properties["eo:cloud_cover"] = primary.cloud_cover_pct
    for key, value in (
        ("view:sun_azimuth", primary.sun_azimuth_deg),
        ("view:sun_elevation", primary.sun_elevation_deg),
        ("view:azimuth", primary.view_azimuth_deg),
        ("view:incidence_angle", primary.view_incidence_deg),
    ):
        if value is not None:
            properties[key] = round(value, 6)

    item = pystac.Item(
        id=item_id,
        geometry=shapely.geometry.mapping(footprint),
        bbox=list(footprint.bounds),
        datetime=primary.center_utc,
        properties=properties,
        collection=collection,
        stac_extensions=[*EXTENSIONS, VIEW_EXTENSION, SAT_EXTENSION],
    )
    for kind, (xml, meta) in images.items():
        _add_image_assets(item, sensor, kind, xml, meta, calibration.get(kind))
    logger.info("built Gaofen item %s (%s) from %s", item_id, ", ".join(images), folder)
    return item


def _image_kind(xml: Path) -> str:
    suffix = xml.stem.rsplit("-", 1)[-1].upper()
    if suffix.startswith("PAN"):
        return "PAN"
    return "MSS"  # "-MSS1" of PMS products, and WFV images, which have no suffix


def _item_id(xml: Path) -> str:
    stem = xml.stem
    head, _, suffix = stem.rpartition("-")
    return head if head and suffix.upper().startswith(("MSS", "PAN")) else stem


def _stac_time(value: Any) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def _image_bands(sensor: Sensor, kind: str, meta: GaofenImageMetadata) -> list[SensorBand]:
    if kind == "PAN":
        return [b for b in sensor.bands if b.name == "PAN"]
    numbers = meta.band_numbers or (1, 2, 3, 4)
    bands = [sensor.find_band(f"B{n}") for n in numbers]
    if any(b is None for b in bands):
        raise ValueError(f"{sensor.key} image lists bands {numbers}; the sensor table has {sensor.band_names}")
    return bands  # type: ignore[return-value]


def _add_image_assets(
    item: pystac.Item,
    sensor: Sensor,
    kind: str,
    xml: Path,
    meta: GaofenImageMetadata,
    calibration: Sequence[RadianceCalibration] | None,
) -> None:
    bands = _image_bands(sensor, kind, meta)
    image = next((xml.with_suffix(s) for s in _IMAGE_SUFFIXES if xml.with_suffix(s).is_file()), xml.with_suffix(".tiff"))
    if not image.is_file():
        logger.warning("Gaofen image %s is missing; its asset points where the image belongs", image)

    raster_bands = []
    if calibration is not None and len(calibration) != len(bands):
        raise ValueError(
            f"calibration for {kind} of {item.id} has {len(calibration)} entries; expected one per band "
            f"({', '.join(b.name for b in bands)})"
        )
    for index, band in enumerate(bands):
        entry: dict[str, Any] = {"nodata": 0, "data_type": "uint16", "spatial_resolution": meta.gsd_m}
        if calibration is not None:
            entry["scale"], entry["offset"] = toa_reflectance_coefficients(calibration[index], meta)
        raster_bands.append(entry)

    item.add_asset(kind, pystac.Asset(
        href=str(image.resolve()),
        media_type=pystac.MediaType.GEOTIFF,
        title=f"{meta.satellite} {meta.sensor} {kind} Level-1A image (not map-projected)",
        roles=["data", "reflectance"] if calibration is not None else ["data"],
        extra_fields={
            "gsd": meta.gsd_m,
            "proj:shape": [meta.height, meta.width],
            "eo:bands": [
                {"name": b.name, "center_wavelength": b.wavelength_um, "full_width_half_max": b.fwhm_um}
                for b in bands
            ],
            "raster:bands": raster_bands,
        },
    ))
    rpc = xml.with_suffix(".rpb")
    if rpc.is_file():
        item.add_asset(f"{kind}-rpc", pystac.Asset(
            href=str(rpc.resolve()), media_type="text/plain", title=f"{kind} rational polynomial coefficients (RPB)",
            roles=["metadata", "rpc"],
        ))
    else:
        logger.warning("Gaofen RPC file %s is missing; the image cannot be orthorectified without it", rpc)
    item.add_asset(f"{kind}-metadata", pystac.Asset(
        href=str(xml.resolve()), media_type=pystac.MediaType.XML, title=f"{kind} product metadata", roles=["metadata"],
    ))


def earth_sun_distance_au(day_of_year: int) -> float:
    """Return the Earth-Sun distance in astronomical units (first-order eccentricity formula)."""
    return 1.0 - 0.01672 * math.cos(math.radians(0.9856 * (day_of_year - 4)))


def toa_reflectance_coefficients(calibration: RadianceCalibration, meta: GaofenImageMetadata) -> tuple[float, float]:
    """Return ``(scale, offset)`` turning DN into top-of-atmosphere reflectance for one scene.

    ``reflectance = pi * radiance * d² / (ESUN * cos(sun zenith))`` with
    ``radiance = gain * DN + bias`` and ``d`` the Earth-Sun distance (AU).
    """
    if meta.sun_elevation_deg is None or meta.sun_elevation_deg <= 0:
        raise ValueError(f"sun elevation {meta.sun_elevation_deg} is not above the horizon; cannot compute reflectance")
    distance = earth_sun_distance_au(meta.center_utc.timetuple().tm_yday)
    factor = math.pi * distance**2 / (calibration.esun * math.sin(math.radians(meta.sun_elevation_deg)))
    return calibration.gain * factor, calibration.bias * factor
