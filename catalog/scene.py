"""Scene descriptions: what the pipeline records about one catalog item.

A :class:`SceneDescription` is small, frozen and picklable, so it can travel
inside a Dask graph. Every later stage reads wavelengths, GSD, scale/offset
and nodata from here and never guesses them.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Literal

BandRole = Literal["reflectance", "classification", "quality"]


@dataclasses.dataclass(frozen=True)
class BandInfo:
    """One band asset of a scene.

    Parameters
    ----------
    name
        Band name as the sensor calls it, e.g. ``"B04"`` or ``"MSS3"``.
    asset_key
        Key of the asset in the STAC item.
    href
        Location of the raster: a local path, ``file://``, ``https://`` or
        ``s3://`` URL. Signed URLs are created at read time, not stored here.
    wavelength_um
        Centre wavelength in micrometres; ``None`` for non-spectral bands
        (classification or quality layers such as Sentinel-2 SCL).
    gsd_m
        Ground sample distance of the asset in metres.
    scale, offset
        ``reflectance = stored_value * scale + offset``.
    nodata
        Stored value that marks missing pixels, or ``None`` if every stored
        value is valid.
    role
        ``"reflectance"`` bands feed the model; ``"classification"`` bands are
        categorical and resampled with nearest neighbour.
    band_index
        1-based band index inside the asset file (multi-band assets).
    """

    name: str
    asset_key: str
    href: str
    wavelength_um: float | None
    gsd_m: float
    scale: float = 1.0
    offset: float = 0.0
    nodata: float | None = None
    role: BandRole = "reflectance"
    band_index: int = 1


@dataclasses.dataclass(frozen=True)
class SceneDescription:
    """Everything the pipeline needs to know about one scene (one STAC item).

    Parameters
    ----------
    item_id, collection
        STAC item id and collection id.
    platform, instrument
        Lower-case STAC values, e.g. ``"sentinel-2a"`` and ``"msi"``, ``"gf2"`` and ``"pms"``.
    datetime_utc
        Acquisition time, timezone-aware UTC.
    bbox_lonlat
        ``(west, south, east, north)`` in EPSG:4326 degrees.
    geometry_json
        The item footprint as a GeoJSON string (a string keeps the record hashable).
    epsg
        EPSG code of the assets' native CRS, or ``None`` when unknown or not
        map-projected.
    bands
        Every band asset the pipeline may read, reflectance bands first.
    cloud_cover_pct
        Scene cloud cover in percent, ``None`` when unknown.
    map_projected
        ``False`` for Level-1A imagery that needs RPCs to be placed on a map.
    processing_baseline
        Sentinel-2 processing baseline such as ``"04.00"``, when known.
    """

    item_id: str
    collection: str
    platform: str
    instrument: str
    datetime_utc: datetime
    bbox_lonlat: tuple[float, float, float, float]
    geometry_json: str
    epsg: int | None
    bands: tuple[BandInfo, ...]
    cloud_cover_pct: float | None = None
    map_projected: bool = True
    processing_baseline: str | None = None

    @property
    def reflectance_bands(self) -> tuple[BandInfo, ...]:
        """Bands with a centre wavelength, in the order they feed the model."""
        return tuple(band for band in self.bands if band.role == "reflectance")

    @property
    def finest_gsd_m(self) -> float:
        """Smallest GSD among the reflectance bands, in metres."""
        return min(band.gsd_m for band in self.reflectance_bands)

    def band(self, name: str) -> BandInfo:
        """Return the band called ``name``; raise ``KeyError`` naming the bands present."""
        for band in self.bands:
            if band.name == name:
                return band
        present = ", ".join(band.name for band in self.bands)
        raise KeyError(f"scene {self.item_id!r} has no band {name!r}; bands present: {present}")
