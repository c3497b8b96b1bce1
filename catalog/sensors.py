"""Built-in band tables of the sensors the pipeline supports.

Each table lists a sensor's bands in wavelength order with centre wavelength
(µm), native GSD (m), the names catalogs use for them, and the radiometry of
the usual product. :func:`describe_item` falls back to these tables where an
item does not carry ``eo:bands``, ``gsd`` or ``raster:bands``.

Sources:

- Sentinel-2 MSI: the nominal centre wavelengths that Earth Search, Planetary
  Computer and the Copernicus catalogs publish in ``eo:bands``. The per-unit
  values in ESA's product metadata differ by at most 16 nm (B12 of S2B). The
  tables use the nominal values for S2A, S2B and S2C alike, so that a scene
  gets the same wavelengths whether they come from a catalog or from here.
- Landsat 8/9 OLI: USGS band centres (same instrument design on both).
- GF-1 PMS/WFV and GF-2 PMS: band edges of the CRESDA sensor specifications
  (blue 0.45-0.52, green 0.52-0.59, red 0.63-0.69, NIR 0.77-0.89, PAN
  0.45-0.90 µm), centres at the middle of each range. GSDs are nadir values.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from catalog.scene import BandRole

RadiometryKind = Literal["reflectance", "dn"]


@dataclasses.dataclass(frozen=True)
class SensorBand:
    """One band of a sensor table.

    ``wavelength_um`` is ``None`` for non-spectral layers (classification,
    quality). ``aliases`` are other names catalogs use for the band as asset
    key or ``eo:bands`` name, compared case-insensitively. ``default`` bands
    are selected when the caller names none; panchromatic bands are not,
    because they come at another GSD than the multispectral ones.
    """

    name: str
    wavelength_um: float | None
    gsd_m: float
    aliases: tuple[str, ...] = ()
    role: BandRole = "reflectance"
    fwhm_um: float | None = None
    default: bool = True


@dataclasses.dataclass(frozen=True)
class Sensor:
    """A sensor table: platform and instrument values, bands and default radiometry.

    ``scale`` and ``offset`` turn stored values of the sensor's standard
    product into reflectance (``reflectance = value * scale + offset``) when
    an item declares nothing. ``radiometry`` is ``"dn"`` for products whose
    values are raw counts, which need per-scene calibration first.
    """

    key: str
    platforms: tuple[str, ...]
    instruments: tuple[str, ...]
    bands: tuple[SensorBand, ...]
    scale: float = 1.0
    offset: float = 0.0
    nodata: float | None = None
    radiometry: RadiometryKind = "reflectance"

    def find_band(self, name: str) -> SensorBand | None:
        """Return the band whose name or alias is ``name`` (case-insensitive), or ``None``."""
        requested = name.strip().lower()
        for band in self.bands:
            if band.name.lower() == requested or requested in (alias.lower() for alias in band.aliases):
                return band
        return None

    @property
    def band_names(self) -> tuple[str, ...]:
        """Names of all bands, in table order."""
        return tuple(band.name for band in self.bands)


def _msi_bands() -> tuple[SensorBand, ...]:
    return (
        SensorBand("B01", 0.443, 60.0, ("coastal",), fwhm_um=0.027),
        SensorBand("B02", 0.490, 10.0, ("blue",), fwhm_um=0.098),
        SensorBand("B03", 0.560, 10.0, ("green",), fwhm_um=0.045),
        SensorBand("B04", 0.665, 10.0, ("red",), fwhm_um=0.038),
        SensorBand("B05", 0.704, 20.0, ("rededge1",), fwhm_um=0.019),
        SensorBand("B06", 0.740, 20.0, ("rededge2",), fwhm_um=0.018),
        SensorBand("B07", 0.783, 20.0, ("rededge3",), fwhm_um=0.028),
        SensorBand("B08", 0.842, 10.0, ("nir",), fwhm_um=0.145),
        SensorBand("B8A", 0.865, 20.0, ("nir08",), fwhm_um=0.033),
        SensorBand("B09", 0.945, 60.0, ("nir09",), fwhm_um=0.026),
        SensorBand("B10", 1.375, 60.0, ("cirrus",), fwhm_um=0.075),
        SensorBand("B11", 1.610, 20.0, ("swir16",), fwhm_um=0.143),
        SensorBand("B12", 2.190, 20.0, ("swir22",), fwhm_um=0.242),
        SensorBand("SCL", None, 20.0, ("scl",), role="classification"),
    )


# Sentinel-2 L1C and L2A store reflectance x 10000 as uint16 with 0 as nodata.
# The +1000 offset of processing baseline 04.00 and later is decided per
# product in catalog.radiometry, not here.
SENTINEL2_MSI = Sensor(
    key="sentinel-2-msi",
    platforms=("sentinel-2a", "sentinel-2b", "sentinel-2c", "sentinel-2"),
    instruments=("msi",),
    bands=_msi_bands(),
    scale=1.0e-4,
    offset=0.0,
    nodata=0.0,
)

# Landsat Collection 2 Level-2 surface reflectance: 2.75e-5 * DN - 0.2.
LANDSAT_OLI = Sensor(
    key="landsat-oli",
    platforms=("landsat-8", "landsat-9"),
    instruments=("oli", "oli-tirs", "oli_tirs"),
    bands=(
        SensorBand("B1", 0.443, 30.0, ("coastal", "oli_b1", "sr_b1")),
        SensorBand("B2", 0.482, 30.0, ("blue", "oli_b2", "sr_b2")),
        SensorBand("B3", 0.562, 30.0, ("green", "oli_b3", "sr_b3")),
        SensorBand("B8", 0.590, 15.0, ("pan", "oli_b8"), default=False),
        SensorBand("B4", 0.655, 30.0, ("red", "oli_b4", "sr_b4")),
        SensorBand("B5", 0.865, 30.0, ("nir08", "nir", "oli_b5", "sr_b5")),
        SensorBand("B9", 1.373, 30.0, ("cirrus", "oli_b9")),
        SensorBand("B6", 1.609, 30.0, ("swir16", "oli_b6", "sr_b6")),
        SensorBand("B7", 2.201, 30.0, ("swir22", "oli_b7", "sr_b7")),
        SensorBand("QA_PIXEL", None, 30.0, ("qa_pixel", "bqa"), role="quality"),
    ),
    scale=2.75e-5,
    offset=-0.2,
    nodata=0.0,
)


def _gaofen_ms_bands(gsd_m: float) -> tuple[SensorBand, ...]:
    return (
        SensorBand("B1", 0.485, gsd_m, ("blue", "b01"), fwhm_um=0.07),
        SensorBand("B2", 0.555, gsd_m, ("green", "b02"), fwhm_um=0.07),
        SensorBand("B3", 0.660, gsd_m, ("red", "b03"), fwhm_um=0.06),
        SensorBand("B4", 0.830, gsd_m, ("nir", "b04"), fwhm_um=0.12),
    )


# Gaofen Level-1A images hold raw counts: reflectance needs the year's
# absolute calibration coefficients (see catalog.gaofen), so no default scale.
GF1_PMS = Sensor(
    key="gf1-pms",
    platforms=("gf1", "gaofen-1", "gf1b", "gf1c", "gf1d"),
    instruments=("pms", "pms1", "pms2"),
    bands=(*_gaofen_ms_bands(8.0), SensorBand("PAN", 0.675, 2.0, ("pan", "b5"), fwhm_um=0.45, default=False)),
    nodata=0.0,
    radiometry="dn",
)
GF1_WFV = Sensor(
    key="gf1-wfv",
    platforms=("gf1", "gaofen-1"),
    instruments=("wfv", "wfv1", "wfv2", "wfv3", "wfv4"),
    bands=_gaofen_ms_bands(16.0),
    nodata=0.0,
    radiometry="dn",
)
GF2_PMS = Sensor(
    key="gf2-pms",
    platforms=("gf2", "gaofen-2"),
    instruments=("pms", "pms1", "pms2"),
    bands=(*_gaofen_ms_bands(3.2), SensorBand("PAN", 0.675, 0.8, ("pan", "b5"), fwhm_um=0.45, default=False)),
    nodata=0.0,
    radiometry="dn",
)

SENSORS: dict[str, Sensor] = {
    sensor.key: sensor for sensor in (SENTINEL2_MSI, LANDSAT_OLI, GF1_PMS, GF1_WFV, GF2_PMS)
}


def normalize_platform(platform: str) -> str:
    """Return the lower-case STAC form of a platform name (``"Sentinel-2B"`` -> ``"sentinel-2b"``)."""
    return platform.strip().lower().replace("_", "-").replace(" ", "-")


def find_sensor(platform: str, instruments: str | tuple[str, ...] | list[str]) -> Sensor:
    """Return the sensor table for a platform and its instruments.

    Parameters
    ----------
    platform
        STAC ``platform`` value, any case (``"Sentinel-2B"``, ``"landsat-9"``, ``"GF2"``).
    instruments
        STAC ``instruments`` value(s), any case.

    Raises
    ------
    KeyError
        When no table matches; the message lists the sensors known.
    """
    platform_key = normalize_platform(platform)
    if isinstance(instruments, str):
        instruments = (instruments,)
    instrument_keys = {instrument.strip().lower() for instrument in instruments}

    for sensor in SENSORS.values():
        if platform_key in sensor.platforms and instrument_keys & set(sensor.instruments):
            return sensor

    known = "; ".join(f"{s.key} ({'/'.join(s.platforms)} with {'/'.join(s.instruments)})" for s in SENSORS.values())
    raise KeyError(
        f"no sensor table for platform {platform!r} with instruments {sorted(instrument_keys)}; "
        f"known sensors: {known}. Add eo:bands, gsd and raster:bands to the item's assets instead."
    )
