"""Sensor band tables."""

from __future__ import annotations

import pytest

from catalog import SENSORS, find_sensor


def test_tables_in_wavelength_order_and_micrometres():
    for sensor in SENSORS.values():
        wavelengths = [band.wavelength_um for band in sensor.bands if band.role == "reflectance" and band.default]
        assert wavelengths == sorted(wavelengths), sensor.key
        assert all(0.4 < w < 2.5 for w in wavelengths), sensor.key
        assert len(set(sensor.band_names)) == len(sensor.band_names), sensor.key


@pytest.mark.parametrize(
    ("platform", "instruments", "key"),
    [
        ("Sentinel-2A", ["msi"], "sentinel-2-msi"),
        ("sentinel-2b", "MSI", "sentinel-2-msi"),
        ("sentinel-2c", ["msi"], "sentinel-2-msi"),
        ("landsat-8", ["oli", "tirs"], "landsat-oli"),
        ("landsat-9", ["oli"], "landsat-oli"),
        ("GF1", ["PMS1"], "gf1-pms"),
        ("GF1", ["WFV3"], "gf1-wfv"),
        ("gf2", ["pms2"], "gf2-pms"),
    ],
)
def test_find_sensor(platform, instruments, key):
    assert find_sensor(platform, instruments).key == key


def test_find_sensor_unknown():
    with pytest.raises(KeyError, match="no sensor table for platform 'SPOT-7'.*known sensors: sentinel-2-msi"):
        find_sensor("SPOT-7", ["naomi"])


@pytest.mark.parametrize(
    ("key", "band", "wavelength_um", "gsd_m"),
    [
        ("sentinel-2-msi", "B04", 0.665, 10),
        ("sentinel-2-msi", "B8A", 0.865, 20),
        ("sentinel-2-msi", "B09", 0.945, 60),
        ("landsat-oli", "B5", 0.865, 30),
        ("landsat-oli", "B8", 0.590, 15),
        ("gf1-pms", "B4", 0.830, 8),
        ("gf1-pms", "PAN", 0.675, 2),
        ("gf1-wfv", "B1", 0.485, 16),
        ("gf2-pms", "B3", 0.660, 3.2),
        ("gf2-pms", "PAN", 0.675, 0.8),
    ],
)
def test_band_values(key, band, wavelength_um, gsd_m):
    entry = SENSORS[key].find_band(band)

    assert entry.wavelength_um == wavelength_um
    assert entry.gsd_m == gsd_m


def test_aliases_case_insensitive():
    assert SENSORS["sentinel-2-msi"].find_band("RedEdge1").name == "B05"
    assert SENSORS["sentinel-2-msi"].find_band("nir08").name == "B8A"
    assert SENSORS["landsat-oli"].find_band("OLI_B4").name == "B4"
    assert SENSORS["sentinel-2-msi"].find_band("B13") is None
