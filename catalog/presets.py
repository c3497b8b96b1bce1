"""Public STAC APIs users search for Sentinel-2, by short name.

Gaofen has no public STAC API: users pass the URL of their own API (often
pgstac) or a local catalog folder built with :func:`catalog.build_gaofen_items`.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

SigningKind = Literal["none", "planetary-computer"]


@dataclasses.dataclass(frozen=True)
class CatalogPreset:
    """A public STAC API: its URL, the collections it serves and the default one.

    ``signing`` names how asset hrefs are authorized at read time. Planetary
    Computer blob URLs need a SAS token appended
    (:func:`catalog.sign_planetary_computer_href`). Tokens expire, so they are
    added when a worker opens the file and never stored in a search result.
    """

    name: str
    url: str
    collections: tuple[str, ...]
    default_collections: tuple[str, ...]
    signing: SigningKind = "none"


PRESETS: dict[str, CatalogPreset] = {
    preset.name: preset
    for preset in (
        CatalogPreset(
            name="earth-search",
            url="https://earth-search.aws.element84.com/v1",
            collections=("sentinel-2-l2a", "sentinel-2-c1-l2a", "sentinel-2-l1c", "landsat-c2-l2"),
            default_collections=("sentinel-2-l2a",),
        ),
        CatalogPreset(
            name="planetary-computer",
            url="https://planetarycomputer.microsoft.com/api/stac/v1",
            collections=("sentinel-2-l2a", "landsat-c2-l2"),
            default_collections=("sentinel-2-l2a",),
            signing="planetary-computer",
        ),
        CatalogPreset(
            name="cdse",
            url="https://stac.dataspace.copernicus.eu/v1",
            collections=("sentinel-2-l2a", "sentinel-2-l1c"),
            default_collections=("sentinel-2-l2a",),
        ),
    )
}


def get_preset(name: str) -> CatalogPreset:
    """Return the preset called ``name``; raise ``ValueError`` listing the presets otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown catalog preset {name!r}; presets: {', '.join(PRESETS)}, "
            "or pass a STAC API URL or a local catalog folder"
        ) from None
