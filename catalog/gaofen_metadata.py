"""Read the product metadata XML of GF-1/GF-2 Level-1A deliveries.

Each image of a delivery (``-MSS1.tiff``, ``-PAN1.tiff``, or the single
WFV image) comes with an XML file. Two layouts are in circulation: the short
one, with every field a direct child of ``<ProductMetaData>``, and a longer
one that groups fields into sections and adds others. Fields are looked up
by tag name at any depth, under each name the layouts use, so both parse.

Times in these files are Beijing time (UTC+8): ``ReceiveTime`` is the only
field in UTC (it equals ``CenterTime`` minus eight hours in real products).
"""

from __future__ import annotations

import dataclasses
import logging
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone
from pathlib import Path

logger = logging.getLogger(__name__)

BEIJING_TIME = timezone(timedelta(hours=8))

# Field -> tag names used by the known layouts, in order of preference.
# NOTE: only the short layout was checked against real files; the alternate
# names stand for the longer layout and have not been seen in a delivery.
_FIELDS: dict[str, tuple[str, ...]] = {
    "satellite": ("SatelliteID", "SatelliteId", "Satellite"),
    "sensor": ("SensorID", "SensorId", "Sensor"),
    "product_id": ("ProductID", "ProductId"),
    "scene_id": ("SceneID", "SceneId"),
    "orbit": ("OrbitID", "OrbitId", "Orbit"),
    "level": ("ProductLevel",),
    "produce_time": ("ProduceTime", "ProductionTime"),
    "bands": ("Bands", "BandList"),
    "start_time": ("StartTime", "ImagingStartTime", "SceneStartTime"),
    "end_time": ("EndTime", "ImagingStopTime", "ImagingEndTime", "SceneEndTime"),
    "center_time": ("CenterTime", "ImagingTime", "SceneCenterTime"),
    "gsd": ("ImageGSD", "GSD", "ImageResolution"),
    "width": ("WidthInPixels", "ImageWidth", "Samples"),
    "height": ("HeightInPixels", "ImageHeight", "Lines"),
    "cloud": ("CloudPercent", "CloudCoverPercent", "CloudCover"),
    "sun_azimuth": ("SolarAzimuth", "SunAzimuth"),
    "sun_zenith": ("SolarZenith", "SunZenith"),
    "view_azimuth": ("SatelliteAzimuth",),
    "view_elevation": ("SatelliteZenith",),
}
_CORNERS = ("TopLeft", "TopRight", "BottomRight", "BottomLeft")


@dataclasses.dataclass(frozen=True)
class GaofenImageMetadata:
    """Metadata of one image, read from its XML and converted to standard units.

    Times are aware UTC datetimes; angles in degrees; ``corners_lonlat`` in
    the order top-left, top-right, bottom-right, bottom-left (EPSG:4326);
    ``cloud_cover_pct`` is ``None`` where the file contains no valid percentage.
    ``view_incidence_deg`` is ``90 - SatelliteZenith`` (see :func:`read_gaofen_xml`).
    """

    satellite: str
    sensor: str
    product_id: str | None
    scene_id: str | None
    orbit: int | None
    level: str | None
    band_numbers: tuple[int, ...]
    start_utc: datetime
    end_utc: datetime
    center_utc: datetime
    produced_utc: datetime | None
    gsd_m: float
    width: int
    height: int
    cloud_cover_pct: float | None
    sun_azimuth_deg: float | None
    sun_elevation_deg: float | None
    view_azimuth_deg: float | None
    view_incidence_deg: float | None
    corners_lonlat: tuple[tuple[float, float], ...]


def parse_beijing_time(text: str) -> datetime:
    """Convert a ``YYYY-MM-DD HH:MM:SS`` Beijing time to an aware UTC datetime."""
    value = datetime.fromisoformat(text.strip().replace("T", " "))
    if value.tzinfo is None:
        value = value.replace(tzinfo=BEIJING_TIME)
    return value.astimezone(timezone.utc)


def read_gaofen_xml(path: str | Path) -> GaofenImageMetadata:
    """Read one Gaofen Level-1A image XML.

    Raises
    ------
    ValueError
        When a required field (satellite, sensor, times, GSD, size, corners)
        is missing or not a number; the message names the file and the tag.
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as error:
        raise ValueError(f"{path}: invalid XML ({error}); expected Gaofen product metadata") from None

    values: dict[str, str] = {}
    for element in root.iter():
        tag = element.tag.rsplit("}", 1)[-1]
        text = (element.text or "").strip()
        if text and tag not in values:
            values[tag] = text

    def text(field: str, required: bool = True) -> str | None:
        for tag in _FIELDS.get(field, (field,)):
            if tag in values:
                return values[tag]
        if required:
            raise ValueError(f"{path}: missing <{_FIELDS.get(field, (field,))[0]}>; is this a Gaofen product XML?")
        return None

    def number(field: str, required: bool = True) -> float | None:
        raw = text(field, required)
        if raw is None:
            return None
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"{path}: invalid <{field}> value {raw!r}; expected a number") from None

    def time_of(field: str, required: bool = True) -> datetime | None:
        raw = text(field, required)
        if raw is None:
            return None
        try:
            return parse_beijing_time(raw)
        except ValueError:
            raise ValueError(
                f"{path}: invalid <{_FIELDS[field][0]}> value {raw!r}; expected 'YYYY-MM-DD HH:MM:SS' (Beijing time)"
            ) from None

    satellite = text("satellite").upper()
    sensor = text("sensor").upper()
    corners = []
    for corner in _CORNERS:
        lat = number(f"{corner}Latitude")
        lon = number(f"{corner}Longitude")
        corners.append((lon, lat))

    center = time_of("center_time")
    start, end = time_of("start_time", False), time_of("end_time", False)
    band_text = text("bands", False) or ""

    cloud = number("cloud", False)
    if cloud is not None and not 0 <= cloud <= 100:
        # Producers write out-of-range codes (e.g. 101) when the cloud cover was not assessed.
        logger.info("%s: cloud percent %s is out of 0-100; treating cloud cover as unknown", path.name, cloud)
        cloud = None

    sun_zenith = number("sun_zenith", False)
    view_elevation = number("view_elevation", False)
    orbit = text("orbit", False)
    return GaofenImageMetadata(
        satellite=satellite,
        sensor=sensor,
        product_id=text("product_id", False),
        scene_id=text("scene_id", False),
        orbit=int(orbit) if orbit and orbit.isdigit() else None,
        level=text("level", False),
        band_numbers=tuple(int(b) for b in band_text.replace(" ", "").split(",") if b.isdigit()),
        start_utc=start or center,
        end_utc=end or center,
        center_utc=center,
        produced_utc=time_of("produce_time", False),
        gsd_m=number("gsd"),
        width=int(number("width")),
        height=int(number("height")),
        cloud_cover_pct=cloud,
        sun_azimuth_deg=number("sun_azimuth", False),
        sun_elevation_deg=None if sun_zenith is None else 90.0 - sun_zenith,
        view_azimuth_deg=number("view_azimuth", False),
        # NOTE: these files store the satellite's elevation seen from the ground under the
        # name SatelliteZenith (about 75 for a 15 degree roll), so incidence is 90 minus it.
        view_incidence_deg=None if view_elevation is None else 90.0 - view_elevation,
        corners_lonlat=tuple(corners),
    )
