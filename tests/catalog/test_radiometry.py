"""Sentinel-2 processing baselines and product metadata radiometry."""

from __future__ import annotations

import pytest
from catalog_test_data import SAFE_DIR, require

from catalog import read_sentinel2_product_metadata, sentinel2_offset
from catalog.radiometry import (
    find_processing_baseline,
    offset_removed_by_catalog,
    parse_baseline,
    sentinel2_scale_offset,
)
from catalog.sensors import SENTINEL2_MSI

L2A_MTD = SAFE_DIR / "S2A_MSIL2A_20230821T221941_N0509_R029_T01KAB_20230822T021825.SAFE" / "MTD_MSIL2A.xml"
L1C_MTD = SAFE_DIR / "S2A_MSIL1C_20210908T042701_N0301_R133_T46RER_20210908T070248.SAFE" / "MTD_MSIL1C.xml"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("04.00", (4, 0)), ("05.11", (5, 11)), ("2.14", (2, 14)), ("N0400", (4, 0)), ("N0212", (2, 12))],
)
def test_parse_baseline(text, expected):
    assert parse_baseline(text) == expected


def test_parse_baseline_rejects_garbage():
    with pytest.raises(ValueError, match="invalid Sentinel-2 processing baseline 'v4'"):
        parse_baseline("v4")


@pytest.mark.parametrize(
    ("baseline", "offset"),
    [("02.12", 0.0), ("03.01", 0.0), ("03.99", 0.0), ("04.00", -0.1), ("05.09", -0.1), ("05.11", -0.1)],
)
def test_offset_table(baseline, offset):
    assert sentinel2_offset(baseline) == offset


@pytest.mark.parametrize(
    ("properties", "identifiers", "expected"),
    [
        ({"s2:processing_baseline": "05.11"}, [], "05.11"),
        ({"s2:product_uri": "S2B_MSIL2A_20190629T212529_N0212_R043_T06VVN_20201006T080531.SAFE"}, [], "02.12"),
        ({"s2:datatake_id": "GS2B_20250731T130249_043879_N05.11"}, [], "05.11"),
        ({}, ["https://x/S2A_MSIL1C_20200808T010311_N0500_R045_T54PXA_20230413T212505.SAFE/B04.jp2"], "05.00"),
        ({}, ["S2A_29RKH_20200219_0_L2A"], None),
    ],
)
def test_find_processing_baseline(properties, identifiers, expected):
    assert find_processing_baseline(properties, identifiers) == expected


def test_l2a_metadata_declares_boa_offset():
    metadata = read_sentinel2_product_metadata(require(L2A_MTD))

    assert metadata.processing_baseline == "05.09"
    assert metadata.product_type == "S2MSI2A"
    assert metadata.quantification == 10000
    assert len(metadata.add_offsets_dn) == 13
    assert set(metadata.add_offsets_dn.values()) == {-1000.0}
    assert metadata.scale_offset("B04") == (0.0001, -0.1)
    assert metadata.scale_offset("B04")[1] == sentinel2_offset(metadata.processing_baseline)


def test_l1c_metadata_without_offset():
    metadata = read_sentinel2_product_metadata(require(L1C_MTD))

    assert metadata.processing_baseline == "03.01"
    assert metadata.product_type == "S2MSI1C"
    assert metadata.add_offsets_dn == {}
    assert metadata.scale_offset("B8A") == (0.0001, 0.0)
    assert metadata.scale_offset("B8A")[1] == sentinel2_offset(metadata.processing_baseline)


@pytest.mark.parametrize("path", [L2A_MTD, L1C_MTD])
def test_sensor_table_matches_product_metadata(path):
    metadata = read_sentinel2_product_metadata(require(path))

    assert metadata.spacecraft == "Sentinel-2A"
    for band in SENTINEL2_MSI.bands:
        if band.role != "reflectance":
            continue
        assert metadata.resolutions_m[band.name] == band.gsd_m, band.name
        # Nominal table values vs. the S2A spectral response centres of ESA.
        assert metadata.wavelengths_um[band.name] == pytest.approx(band.wavelength_um, abs=0.013), band.name
    assert metadata.wavelengths_um["B04"] == pytest.approx(0.6646)


def test_product_metadata_unknown_band():
    metadata = read_sentinel2_product_metadata(require(L1C_MTD))

    with pytest.raises(KeyError, match="band 'SCL' not in product metadata"):
        metadata.scale_offset("SCL")


def test_product_metadata_rejects_other_xml(tmp_path):
    path = tmp_path / "other.xml"
    path.write_text("<root><a>1</a></root>")

    with pytest.raises(ValueError, match="missing PROCESSING_BASELINE"):
        read_sentinel2_product_metadata(path)


@pytest.mark.parametrize(
    ("properties", "asset_key", "media_type", "expected"),
    [
        ({"earthsearch:boa_offset_applied": True}, "red", "image/tiff; application=geotiff", True),
        ({"earthsearch:boa_offset_applied": True}, "red-jp2", "image/jp2", False),
        ({"earthsearch:boa_offset_applied": False}, "red", "image/tiff; application=geotiff", False),
        ({}, "B04", "image/tiff; application=geotiff", None),
    ],
)
def test_offset_removed_by_catalog(properties, asset_key, media_type, expected):
    assert offset_removed_by_catalog(properties, asset_key, {"type": media_type}) == expected


@pytest.mark.parametrize(
    ("declared_scale", "declared_offset", "baseline", "removed", "expected"),
    [
        (None, None, "05.11", None, (0.0001, -0.1)),  # Planetary Computer: nothing declared
        (None, None, "02.12", None, (0.0001, 0.0)),
        (0.0001, -0.1, "05.11", None, (0.0001, -0.1)),  # declared once, not added again
        (0.0001, 0.0, "02.14", False, (0.0001, 0.0)),
        (0.0001, -0.1, "05.11", True, (0.0001, 0.0)),  # harmonized values
        (0.0001, None, "04.00", None, (0.0001, -0.1)),
        (0.0001, -0.1, None, None, (0.0001, -0.1)),
    ],
)
def test_sentinel2_scale_offset(declared_scale, declared_offset, baseline, removed, expected):
    assert sentinel2_scale_offset("item", "B04", declared_scale, declared_offset, baseline, removed) == expected


def test_sentinel2_scale_offset_undecidable():
    with pytest.raises(ValueError, match="cannot decide the radiometric offset of Sentinel-2 item 'x'"):
        sentinel2_scale_offset("x", "B04", None, None, None, None)
