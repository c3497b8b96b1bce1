"""Scene descriptions of real recorded items: bands, wavelengths, GSD, scale/offset, reflectance."""

from __future__ import annotations

import copy
import json
import logging
from datetime import datetime, timezone

import pystac
import pytest
from catalog_test_data import EARTH_SEARCH_MIXED, L2A_ITEM, PLANETARY_COMPUTER_ITEM, SAFE_DIR, STAC_DIR, read_json

from catalog import describe_item, read_sentinel2_product_metadata
from catalog.scene import SceneDescription

S2_REFLECTANCE_BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
S2_GSD_M = {"B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20, "B08": 10,
            "B8A": 20, "B09": 60, "B11": 20, "B12": 20}


def reflectance(scene: SceneDescription, band: str, stored_value: int) -> float:
    info = scene.band(band)
    return stored_value * info.scale + info.offset


@pytest.fixture(scope="module")
def planetary_computer_item():
    return read_json(STAC_DIR / PLANETARY_COMPUTER_ITEM)


def test_earth_search_l2a_bands(earth_search_page):
    item = earth_search_page["features"][0]
    scene = describe_item(item)

    assert (scene.platform, scene.instrument, scene.epsg) == ("sentinel-2b", "msi", 32724)
    assert scene.processing_baseline == "05.11"
    assert [b.name for b in scene.reflectance_bands] == S2_REFLECTANCE_BANDS
    for band in scene.reflectance_bands:
        eo_band = item["assets"][band.asset_key]["eo:bands"][0]
        assert band.wavelength_um == eo_band["center_wavelength"]
        assert band.gsd_m == S2_GSD_M[band.name]
        # Harmonized COGs (earthsearch:boa_offset_applied), whatever raster:bands declares.
        assert (band.scale, band.offset, band.nodata) == (0.0001, 0.0, 0.0)
        assert band.href.startswith("https://")
        assert band.href.endswith(f"{band.name}.tif")
    assert scene.bands[-1].name == "SCL"
    assert scene.bands[-1].role == "classification"
    assert scene.bands[-1].wavelength_um is None
    assert scene.finest_gsd_m == 10


def test_every_recorded_sentinel2_item_describes(earth_search_page):
    for item in earth_search_page["features"]:
        scene = describe_item(item)
        assert [b.name for b in scene.reflectance_bands][:4] == ["B01", "B02", "B03", "B04"], item["id"]
        wavelengths = [b.wavelength_um for b in scene.reflectance_bands]
        assert wavelengths == sorted(wavelengths), item["id"]
        assert scene.cloud_cover_pct == item["properties"]["eo:cloud_cover"]


def test_planetary_computer_offset_from_baseline(planetary_computer_item):
    scene = describe_item(planetary_computer_item)

    assert scene.platform == "sentinel-2b"
    assert scene.processing_baseline == "02.12"
    assert scene.band("B04").wavelength_um == 0.665
    assert all((b.scale, b.offset) == (0.0001, 0.0) for b in scene.reflectance_bands)
    assert scene.band("SCL").role == "classification"
    assert scene.datetime_utc == datetime(2019, 6, 29, 21, 25, 29, 24000, tzinfo=timezone.utc)


def test_old_earth_search_item_band_aliases():
    item = read_json(L2A_ITEM)
    scene = describe_item(item)

    assert scene.band("B04").asset_key == "red"
    assert scene.band("B8A").asset_key == "nir08"
    assert scene.band("B8A").gsd_m == 20
    assert scene.band("SCL").role == "classification"  # the item tags SCL as "reflectance"
    assert all(b.offset == 0.0 for b in scene.reflectance_bands)


def test_landsat_item_bands():
    item = read_json(STAC_DIR / EARTH_SEARCH_MIXED)["features"][1]
    scene = describe_item(item)

    assert (scene.platform, scene.instrument) == ("landsat-8", "oli")
    assert [b.name for b in scene.reflectance_bands] == ["B1", "B2", "B3", "B4", "B5", "B6", "B7"]
    assert scene.band("B4").wavelength_um == 0.65
    assert all((b.scale, b.offset, b.gsd_m) == (2.75e-05, -0.2, 30.0) for b in scene.reflectance_bands)
    assert scene.band("QA_PIXEL").role == "quality"


def test_band_selection_keeps_requested_order(earth_search_page):
    scene = describe_item(earth_search_page["features"][0], bands=["red", "B03", "blue", "SCL"])

    assert [b.name for b in scene.bands] == ["B04", "B03", "B02", "SCL"]
    assert [b.wavelength_um for b in scene.reflectance_bands] == [0.665, 0.56, 0.49]


def test_same_reflectance_across_catalogs_and_baselines(earth_search_page, planetary_computer_item):
    true_reflectance = 0.1234
    old_dn, new_dn = 1234, 2234  # baseline 04.00 and later store DN + 1000

    reprocessed = copy.deepcopy(planetary_computer_item)  # same catalog, product reprocessed at 05.00
    del reprocessed["properties"]["s2:processing_baseline"]
    reprocessed["properties"]["s2:product_uri"] = "S2B_MSIL2A_20190629T212529_N0500_R043_T06VVN_20230101T000000.SAFE"

    originals_only = copy.deepcopy(earth_search_page["features"][0])  # ESA's JPEG 2000 files only
    originals_only["assets"] = {k: v for k, v in originals_only["assets"].items() if k.endswith("-jp2")}

    cases = [
        (describe_item(earth_search_page["features"][0]), old_dn),  # Earth Search COGs, harmonized
        (describe_item(originals_only), new_dn),  # same item, ESA originals
        (describe_item(earth_search_page["features"][1]), new_dn),  # Earth Search L1C, declares -0.1
        (describe_item(earth_search_page["features"][2]), new_dn),  # Earth Search collection 1
        (describe_item(read_json(L2A_ITEM)), old_dn),  # Earth Search, baseline 02.14, declares 0
        (describe_item(planetary_computer_item), old_dn),  # Planetary Computer, declares nothing
        (describe_item(reprocessed), new_dn),  # 2019 sensing date, baseline 05.00
    ]
    for scene, stored in cases:
        assert reflectance(scene, "B04", stored) == pytest.approx(true_reflectance, abs=1e-9), scene.item_id

    l2a = read_sentinel2_product_metadata(
        SAFE_DIR / "S2A_MSIL2A_20230821T221941_N0509_R029_T01KAB_20230822T021825.SAFE" / "MTD_MSIL2A.xml"
    )
    scale, offset = l2a.scale_offset("B04")
    assert new_dn * scale + offset == pytest.approx(true_reflectance, abs=1e-9)


def test_declared_offset_not_applied_twice(earth_search_page):
    item = earth_search_page["features"][2]  # collection 1: ESA values, offset declared
    assert item["collection"] == "sentinel-2-c1-l2a"
    assert item["assets"]["red"]["raster:bands"][0]["offset"] == -0.1

    assert describe_item(item).band("B04").offset == -0.1


def test_harmonized_earth_search_cogs(earth_search_page):
    item = earth_search_page["features"][0]
    assert item["properties"]["earthsearch:boa_offset_applied"] is True

    cog = describe_item(item).band("B04")
    jp2_only = copy.deepcopy(item)
    del jp2_only["assets"]["red"]
    original = describe_item(jp2_only).band("B04")

    assert (cog.asset_key, cog.offset) == ("red", 0.0)
    assert (original.asset_key, original.offset) == ("red-jp2", -0.1)


def test_unharmonized_flag_after_baseline_4_warns(earth_search_page, caplog):
    item = copy.deepcopy(earth_search_page["features"][0])
    item["properties"]["earthsearch:boa_offset_applied"] = False

    with caplog.at_level(logging.WARNING, logger="catalog.describe"):
        scene = describe_item(item)

    assert scene.band("B04").offset == -0.1
    assert "may already be harmonized" in caplog.text


def test_baseline_from_product_id_when_property_missing(earth_search_page):
    item = copy.deepcopy(earth_search_page["features"][2])
    del item["properties"]["s2:processing_baseline"]
    for asset in item["assets"].values():
        for raster_band in asset.get("raster:bands", []):
            raster_band.pop("offset", None)
            raster_band.pop("scale", None)

    scene = describe_item(item)

    assert scene.processing_baseline == "05.11"
    assert scene.band("B04").offset == -0.1


def test_offset_ignores_sensing_date(planetary_computer_item):
    item = copy.deepcopy(planetary_computer_item)
    item["properties"]["datetime"] = "2025-01-01T10:00:00Z"  # after 04.00 came in, but the product's baseline is 02.12

    assert describe_item(item).band("B04").offset == 0.0


def test_relative_hrefs_resolved_against_item_file(tmp_path, planetary_computer_item):
    item_dict = copy.deepcopy(planetary_computer_item)
    item_dict["assets"]["B04"]["href"] = "./bands/B04.tif"
    path = tmp_path / "scene" / "item.json"
    path.parent.mkdir()
    path.write_text(json.dumps(item_dict))

    scene = describe_item(pystac.Item.from_file(str(path)), bands=["B04"])

    assert scene.band("B04").href == str(tmp_path / "scene" / "bands" / "B04.tif")


def test_relative_href_without_self_link_rejected(planetary_computer_item):
    item = copy.deepcopy(planetary_computer_item)
    item["assets"]["B04"]["href"] = "B04.tif"
    item["links"] = []

    with pytest.raises(ValueError, match="relative asset href 'B04.tif' and no self link"):
        describe_item(item, bands=["B04"])


def test_wavelength_in_nanometres_rejected(planetary_computer_item):
    item = copy.deepcopy(planetary_computer_item)
    item["assets"]["B04"]["eo:bands"][0]["center_wavelength"] = 665

    with pytest.raises(ValueError, match=r"center_wavelength 665.0 is not in µm .*divide nm by 1000"):
        describe_item(item)


def test_unknown_band_rejected(planetary_computer_item):
    with pytest.raises(ValueError, match=r"has no band 'B99'; bands available: B01, B02"):
        describe_item(planetary_computer_item, bands=["B04", "B99"])


def test_unknown_sensor_rejected(planetary_computer_item):
    item = copy.deepcopy(planetary_computer_item)
    item["properties"]["platform"] = "worldview-3"
    item["properties"]["instruments"] = ["wv110"]

    with pytest.raises(ValueError, match="no sensor table for platform 'worldview-3'"):
        describe_item(item)


def test_undecidable_sentinel2_offset_rejected(planetary_computer_item):
    item = copy.deepcopy(planetary_computer_item)
    for key in ("s2:processing_baseline", "s2:product_uri", "s2:datatake_id", "s2:granule_id", "s2:datastrip_id"):
        item["properties"].pop(key, None)
    for asset in item["assets"].values():
        asset["href"] = asset["href"].replace("_N0212_", "_")

    with pytest.raises(ValueError, match="cannot decide the radiometric offset"):
        describe_item(item)


def test_not_a_stac_item_rejected():
    with pytest.raises(ValueError, match="expected a STAC item"):
        describe_item({"type": "FeatureCollection", "features": []})


def test_stac_1_1_bands_and_resolution_variants(planetary_computer_item):
    # CDSE-style layout: one asset per band and resolution, STAC 1.1 "bands" with raster: fields.
    item = copy.deepcopy(planetary_computer_item)
    item["properties"]["s2:processing_baseline"] = "05.10"
    template = item["assets"].pop("B04")
    for gsd in (20, 10, 60):
        item["assets"][f"B04_{gsd}m"] = {
            "href": template["href"].replace("_10m", f"_{gsd}m"),
            "roles": ["data"],
            "bands": [{"name": "B04", "eo:center_wavelength": 0.665, "raster:scale": 0.0001,
                       "raster:offset": -0.1, "raster:spatial_resolution": gsd, "nodata": 0}],
        }

    band = describe_item(item, bands=["B04"]).band("B04")

    assert band.asset_key == "B04_10m"
    assert band.gsd_m == 10
    assert band.wavelength_um == 0.665
    assert (band.scale, band.offset, band.nodata) == (0.0001, -0.1, 0.0)


def test_true_colour_composite_never_used(planetary_computer_item):
    item = copy.deepcopy(planetary_computer_item)
    for key in ("B02", "B03", "B04"):
        del item["assets"][key]

    scene = describe_item(item)

    assert "B04" not in [b.name for b in scene.bands]
    assert all(b.asset_key != "visual" for b in scene.bands)
