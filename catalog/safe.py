"""Sentinel-2 SAFE product folders as input to the local catalog builder.

A SAFE folder carries its own product metadata (``MTD_MSIL1C.xml`` or
``MTD_MSIL2A.xml``): spacecraft, sensing time, processing baseline, cloud
assessment and the per-band offsets. The builder reads them from there
instead of asking the user, and finds the band files under ``GRANULE/``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from catalog.radiometry import Sentinel2ProductMetadata, read_sentinel2_product_metadata
from catalog.sensors import normalize_platform

PRODUCT_METADATA_NAMES = ("MTD_MSIL2A.xml", "MTD_MSIL1C.xml")
_RESOLUTION_IN_NAME = re.compile(r"_(\d+)m$")


def find_product_metadata(folder: Path) -> Sentinel2ProductMetadata | None:
    """Return the product metadata of a SAFE folder, or ``None`` for other folders."""
    for name in PRODUCT_METADATA_NAMES:
        if (folder / name).is_file():
            return read_sentinel2_product_metadata(folder / name)
    return None


def product_properties(product: Sentinel2ProductMetadata) -> dict[str, Any]:
    """Return the STAC item properties the product metadata gives."""
    properties: dict[str, Any] = {
        "platform": normalize_platform(product.spacecraft),
        "instruments": ["msi"],
        "constellation": "sentinel-2",
        "s2:processing_baseline": product.processing_baseline,
        "s2:product_type": product.product_type,
    }
    if product.product_uri:
        properties["s2:product_uri"] = product.product_uri
    if product.cloud_cover_pct is not None:
        properties["eo:cloud_cover"] = product.cloud_cover_pct
    return properties


def resolution_in_name(path: Path) -> float | None:
    """Return the pixel size that a SAFE band file name states (``..._B04_10m.jp2`` -> 10), or ``None``."""
    match = _RESOLUTION_IN_NAME.search(path.stem)
    return float(match.group(1)) if match else None
