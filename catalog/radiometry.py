"""Sentinel-2 radiometric offset, decided from the processing baseline.

From processing baseline 04.00 (January 2022, and every product of the
reprocessed Collection 1) ESA stores L1C and L2A reflectance with an added
offset of 1000 DN, so that ``reflectance = (DN - 1000) / 10000``. The product
metadata declares it as ``RADIO_ADD_OFFSET`` (L1C) or ``BOA_ADD_OFFSET``
(L2A). Earlier baselines store ``DN / 10000``. The offset belongs to the
product, so it is decided from its baseline, never from the sensing date: a
2018 scene reprocessed at baseline 05.00 carries the offset.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

S2_QUANTIFICATION = 10000.0
S2_ADD_OFFSET_DN = -1000.0
S2_OFFSET_BASELINE = (4, 0)

# "N0400" in product ids and "N04.00" in datastrip/tile ids.
_BASELINE_IN_ID = re.compile(r"_N(\d{2})\.?(\d{2})(?=[_.]|$)")
_BASELINE_VALUE = re.compile(r"^(\d{1,2})\.(\d{2})$")


def parse_baseline(value: str) -> tuple[int, int]:
    """Return ``(major, minor)`` of a baseline string such as ``"04.00"`` or ``"N0400"``.

    Raises
    ------
    ValueError
        When ``value`` is not in either form.
    """
    text = value.strip()
    match = _BASELINE_VALUE.match(text)
    if match:
        return int(match.group(1)), int(match.group(2))
    match = _BASELINE_IN_ID.search("_" + text if text.startswith("N") else text)
    if match:
        return int(match.group(1)), int(match.group(2))
    raise ValueError(
        f"invalid Sentinel-2 processing baseline {value!r}; expected 'MM.mm' (e.g. '04.00') "
        "or the 'N0400' part of a product id"
    )


def find_processing_baseline(properties: Mapping[str, Any], identifiers: Iterable[str] = ()) -> str | None:
    """Return the processing baseline of a Sentinel-2 product as ``"MM.mm"``, or ``None``.

    ``s2:processing_baseline`` wins; otherwise the ``N0400``-style part of
    ``s2:product_uri``, ``s2:datatake_id``, ``s2:granule_id``,
    ``s2:tile_id``, ``s2:datastrip_id`` or of ``identifiers`` (item id, asset
    hrefs) is used.
    """
    declared = properties.get("s2:processing_baseline")
    if declared:
        major, minor = parse_baseline(str(declared))
        return f"{major:02d}.{minor:02d}"

    keys = ("s2:product_uri", "s2:datatake_id", "s2:granule_id", "s2:tile_id", "s2:datastrip_id")
    candidates = [str(properties[key]) for key in keys if properties.get(key)]
    candidates.extend(identifiers)
    for text in candidates:
        match = _BASELINE_IN_ID.search(text)
        if match:
            return f"{match.group(1)}.{match.group(2)}"
    return None


def sentinel2_offset(baseline: str) -> float:
    """Return the reflectance offset of Sentinel-2 L1C/L2A products at ``baseline``.

    ``-0.1`` from baseline 04.00 on, ``0.0`` before; to be used with the
    scale ``1e-4``.
    """
    if parse_baseline(baseline) >= S2_OFFSET_BASELINE:
        return S2_ADD_OFFSET_DN / S2_QUANTIFICATION
    return 0.0


def offset_removed_by_catalog(properties: Mapping[str, Any], asset_key: str, asset: Mapping[str, Any]) -> bool | None:
    """Return whether a catalog declares that it removed the baseline offset from an asset's values.

    Earth Search's ``sentinel-2-l2a`` COGs carry ``earthsearch:boa_offset_applied``:
    ``true`` means the COG values were harmonized (the +1000 DN taken out),
    although ``raster:bands`` still declares ``offset: -0.1``. Users comparing
    these COGs with the Copernicus and Planetary Computer originals found the
    values 1000 DN lower (Element84/earth-search issue tracker, "Sentinel-2
    L2a offset anomalies"). The JPEG 2000 assets of the same items are ESA's
    originals and keep the offset. ``None`` when the catalog does not state it.
    """
    applied = properties.get("earthsearch:boa_offset_applied")
    if applied is None:
        return None
    is_original = asset_key.lower().endswith("-jp2") or "jp2" in str(asset.get("type", ""))
    return bool(applied) and not is_original


def sentinel2_scale_offset(
    item_id: str,
    band_name: str,
    declared_scale: float | None,
    declared_offset: float | None,
    baseline: str | None,
    offset_removed: bool | None,
) -> tuple[float, float]:
    """Decide ``(scale, offset)`` of a Sentinel-2 reflectance band, applying the offset once.

    Values the catalog harmonized get offset 0. Otherwise a declared
    ``raster:bands`` offset is used as is and never added to the baseline's.
    Without a declaration, the baseline decides.

    Raises
    ------
    ValueError
        When nothing is declared and the baseline is unknown.
    """
    scale = 1.0 / S2_QUANTIFICATION if declared_scale is None else float(declared_scale)
    if offset_removed:
        return scale, 0.0

    expected_offset = sentinel2_offset(baseline) if baseline else None
    if declared_scale is None and declared_offset is None:
        if expected_offset is None:
            raise ValueError(
                f"cannot decide the radiometric offset of Sentinel-2 item {item_id!r}: it has no "
                "s2:processing_baseline, no 'N0400'-style baseline in its ids and no raster:bands "
                "scale/offset; add s2:processing_baseline or raster:bands scale/offset to the item"
            )
        return scale, expected_offset

    offset = float(declared_offset) if declared_offset is not None else (expected_offset or 0.0)
    if expected_offset is not None and not math.isclose(offset, expected_offset, abs_tol=1e-9):
        logger.warning(
            "item %s band %s declares offset %s but processing baseline %s implies %s; using the declared value",
            item_id, band_name, offset, baseline, expected_offset,
        )
    return scale, offset


@dataclasses.dataclass(frozen=True)
class Sentinel2ProductMetadata:
    """Radiometry and bands read from a Sentinel-2 ``MTD_MSIL1C.xml`` / ``MTD_MSIL2A.xml``.

    ``add_offsets_dn`` maps band names (``"B04"``) to the declared
    ``RADIO_ADD_OFFSET``/``BOA_ADD_OFFSET`` in DN; it is empty for products
    that declare none (baselines before 04.00). ``start_utc`` is the
    product's sensing start, ``cloud_cover_pct`` its cloud assessment.
    """

    spacecraft: str
    product_type: str
    processing_baseline: str
    quantification: float
    add_offsets_dn: Mapping[str, float]
    wavelengths_um: Mapping[str, float]
    resolutions_m: Mapping[str, float]
    product_uri: str | None = None
    start_utc: datetime | None = None
    cloud_cover_pct: float | None = None

    def scale_offset(self, band: str) -> tuple[float, float]:
        """Return ``(scale, offset)`` turning stored values of ``band`` into reflectance."""
        if band not in self.wavelengths_um:
            raise KeyError(f"band {band!r} not in product metadata; bands: {', '.join(self.wavelengths_um)}")
        scale = 1.0 / self.quantification
        return scale, self.add_offsets_dn.get(band, 0.0) * scale


def _band_name(physical_band: str) -> str:
    # Product metadata names bands "B1", "B8A"; catalogs and the sensor table use "B01", "B8A".
    suffix = physical_band[1:]
    return f"B{int(suffix):02d}" if suffix.isdigit() else physical_band


def read_sentinel2_product_metadata(path: str | Path) -> Sentinel2ProductMetadata:
    """Read band wavelengths, resolutions and radiometry from Sentinel-2 product metadata.

    Parameters
    ----------
    path
        An ``MTD_MSIL1C.xml`` or ``MTD_MSIL2A.xml`` file of a SAFE product.

    Raises
    ------
    ValueError
        When the file lacks the processing baseline or quantification value.
    """
    root = ET.parse(path).getroot()

    def first_text(tag: str) -> str | None:
        for element in root.iter():
            if element.tag.rsplit("}", 1)[-1] == tag and element.text:
                return element.text.strip()
        return None

    baseline = first_text("PROCESSING_BASELINE")
    quantification = first_text("BOA_QUANTIFICATION_VALUE") or first_text("QUANTIFICATION_VALUE")
    if baseline is None or quantification is None:
        raise ValueError(
            f"{path}: missing PROCESSING_BASELINE or quantification value; "
            "expected a Sentinel-2 MTD_MSIL1C.xml or MTD_MSIL2A.xml file"
        )

    band_ids: dict[str, str] = {}
    wavelengths: dict[str, float] = {}
    resolutions: dict[str, float] = {}
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] != "Spectral_Information":
            continue
        name = _band_name(element.attrib["physicalBand"])
        band_ids[element.attrib["bandId"]] = name
        for child in element.iter():
            tag = child.tag.rsplit("}", 1)[-1]
            if tag == "CENTRAL" and child.text:
                unit = child.attrib.get("unit", "nm")
                wavelengths[name] = float(child.text) / (1000.0 if unit == "nm" else 1.0)
            elif tag == "RESOLUTION" and child.text:
                resolutions[name] = float(child.text)

    offsets: dict[str, float] = {}
    for element in root.iter():
        tag = element.tag.rsplit("}", 1)[-1]
        if tag in ("RADIO_ADD_OFFSET", "BOA_ADD_OFFSET") and element.text:
            offsets[band_ids[element.attrib["band_id"]]] = float(element.text)

    major, minor = parse_baseline(baseline)
    start = first_text("PRODUCT_START_TIME")
    cloud = first_text("Cloud_Coverage_Assessment")
    return Sentinel2ProductMetadata(
        spacecraft=first_text("SPACECRAFT_NAME") or "",
        product_type=first_text("PRODUCT_TYPE") or "",
        processing_baseline=f"{major:02d}.{minor:02d}",
        quantification=float(quantification),
        add_offsets_dn=offsets,
        wavelengths_um=wavelengths,
        resolutions_m=resolutions,
        product_uri=first_text("PRODUCT_URI"),
        start_utc=datetime.fromisoformat(start.replace("Z", "+00:00")).astimezone(timezone.utc) if start else None,
        cloud_cover_pct=float(cloud) if cloud else None,
    )
