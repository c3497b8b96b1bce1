"""STAC search, sensor band tables, scene descriptions and local catalogs.

The first stage of every job: find the scenes that cover an area and time
range, and describe each one (bands, wavelengths, GSD, nodata, scale/offset)
so that later stages never guess::

    from catalog import describe_item, format_scene_table, search_items

    items = search_items("earth-search", bbox=(11.0, 46.0, 11.5, 46.5),
                         datetime="2024-06-01/2024-06-30", max_cloud_cover=20)
    print(format_scene_table(items))
    scenes = [describe_item(item, bands=["B02", "B03", "B04", "B08"]) for item in items]

Readers open ``BandInfo.href`` through :func:`sign_planetary_computer_href`,
which signs Planetary Computer blob URLs and returns every other href unchanged.
"""

from catalog.builder import build_local_catalog
from catalog.describe import describe_item
from catalog.gaofen import RadianceCalibration, build_gaofen_items, read_calibration
from catalog.pgstac_load import load_into_pgstac
from catalog.presets import PRESETS, CatalogPreset
from catalog.radiometry import read_sentinel2_product_metadata, sentinel2_offset
from catalog.scene import BandInfo, SceneDescription
from catalog.search import StacApiError, search_items
from catalog.signing import sign_planetary_computer_href
from catalog.sensors import SENSORS, Sensor, SensorBand, find_sensor
from catalog.table import format_scene_table

__all__ = [
    "PRESETS",
    "RadianceCalibration",
    "SENSORS",
    "BandInfo",
    "CatalogPreset",
    "SceneDescription",
    "Sensor",
    "SensorBand",
    "StacApiError",
    "build_gaofen_items",
    "build_local_catalog",
    "describe_item",
    "find_sensor",
    "format_scene_table",
    "load_into_pgstac",
    "read_calibration",
    "read_sentinel2_product_metadata",
    "search_items",
    "sentinel2_offset",
    "sign_planetary_computer_href",
]
