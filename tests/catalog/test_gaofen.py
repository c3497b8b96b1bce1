"""Gaofen Level-1A deliveries to STAC items, checked against their XML and a reference tool's items."""

from __future__ import annotations

import json
import math
import shutil
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pystac
import pystac.validation
import pytest
import shapely.geometry
from catalog_test_data import GAOFEN_DIR, gaofen_delivery_dirs, require

from catalog import build_gaofen_items, describe_item, format_scene_table, search_items
from catalog.gaofen import RadianceCalibration, earth_sun_distance_au, read_calibration
from catalog.gaofen_metadata import read_gaofen_xml

REFERENCE_DIR = GAOFEN_DIR / "stars_expected_stac_items"


def xml_fields(path: Path) -> dict[str, str]:
    return {element.tag: (element.text or "").strip() for element in ET.parse(path).getroot()}


def primary_xml(folder: Path) -> Path:
    mss = sorted(folder.glob("*-MSS*.xml"))
    return mss[0] if mss else sorted(folder.glob("*.xml"))[0]


def beijing_to_utc(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc) - timedelta(hours=8)


@pytest.fixture(scope="module")
def items_by_folder(gaofen_catalog):
    _, items = gaofen_catalog
    return {item.id: item for item in items}


def test_every_delivery_becomes_valid_item(gaofen_catalog):
    out_dir, items = gaofen_catalog
    folders = gaofen_delivery_dirs()

    assert [item.id for item in items] == [folder.name for folder in folders]
    for item in items:
        pystac.validation.validate_dict(item.to_dict(), extensions=[])
        assert item.properties["fleximo:map_projected"] is False
        assert item.properties["proj:epsg"] is None
        assert item.properties["processing:level"] == "L1A"
    assert len(search_items(str(out_dir))) == len(folders)


def test_times_converted_from_beijing(items_by_folder):
    for folder in gaofen_delivery_dirs():
        fields = xml_fields(primary_xml(folder))
        item = items_by_folder[folder.name]

        assert item.datetime == beijing_to_utc(fields["CenterTime"])
        # ReceiveTime is the one UTC field of these files; it matches the converted centre time.
        assert item.datetime == datetime.strptime(fields["ReceiveTime"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
        assert item.properties["start_datetime"] == beijing_to_utc(fields["StartTime"]).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_footprints_from_corners(items_by_folder):
    for folder in gaofen_delivery_dirs():
        fields = xml_fields(primary_xml(folder))
        footprint = shapely.geometry.shape(items_by_folder[folder.name].geometry)

        corners = [
            (float(fields[f"{corner}Longitude"]), float(fields[f"{corner}Latitude"]))
            for corner in ("TopLeft", "TopRight", "BottomRight", "BottomLeft")
        ]
        assert set(footprint.exterior.coords) == set(corners)
        assert footprint.exterior.is_ccw
        reference = json.loads((REFERENCE_DIR / f"MetadataExtractorsTests_{folder.name}.json").read_text())
        assert footprint.equals(shapely.geometry.shape(reference["geometry"]))


def test_bands_gsd_and_wavelengths(items_by_folder):
    for folder in gaofen_delivery_dirs():
        item = items_by_folder[folder.name]
        reference = json.loads((REFERENCE_DIR / f"MetadataExtractorsTests_{folder.name}.json").read_text())

        for kind in ("MSS", "PAN"):
            if kind not in reference["assets"]:
                assert kind not in item.assets
                continue
            asset = item.assets[kind].extra_fields
            expected = reference["assets"][kind]
            xml = folder / Path(expected["href"]).name.replace(".tiff", ".xml")
            fields = xml_fields(xml)
            assert asset["gsd"] == float(fields["ImageGSD"]) == expected["gsd"]
            assert asset["proj:shape"] == [int(fields["HeightInPixels"]), int(fields["WidthInPixels"])]
            ours = [band["center_wavelength"] for band in asset["eo:bands"]]
            theirs = [band["center_wavelength"] for band in expected["eo:bands"]]
            assert ours == pytest.approx(theirs, abs=0.006), (folder.name, kind)
            assert item.assets[f"{kind}-rpc"].href == str(xml.with_suffix(".rpb"))


def test_cloud_cover_and_angles(items_by_folder):
    for folder in gaofen_delivery_dirs():
        fields = xml_fields(primary_xml(folder))
        properties = items_by_folder[folder.name].properties

        assert properties["eo:cloud_cover"] == float(fields["CloudPercent"])
        assert properties["view:sun_elevation"] == pytest.approx(90 - float(fields["SolarZenith"]))
        assert properties["view:sun_azimuth"] == float(fields["SolarAzimuth"])
        assert 0 <= properties["view:incidence_angle"] < 30
    gf2 = items_by_folder["GF2_PMS1_W91.0_N17.6_20200510_L1A0004793969"].properties
    assert (gf2["platform"], gf2["instruments"], gf2["gaofen:sensor_id"]) == ("gf2", ["pms"], "PMS1")


def test_out_of_range_cloud_cover_is_unknown(tmp_path):
    source = require(GAOFEN_DIR / "GF1_WFV3_E89.0_N23.9_20200523_L1A0004819525")
    folder = tmp_path / source.name
    shutil.copytree(source, folder)
    xml = folder / f"{source.name}.xml"
    xml.write_text(xml.read_text().replace("<CloudPercent>38</CloudPercent>", "<CloudPercent>101</CloudPercent>"))

    item = build_gaofen_items([folder], tmp_path / "out")[0]

    assert "eo:cloud_cover" not in item.properties
    assert read_gaofen_xml(xml).cloud_cover_pct is None
    assert search_items(str(tmp_path / "out"), max_cloud_cover=100) == []
    assert len(search_items(str(tmp_path / "out"))) == 1


def test_sectioned_xml_layout_parses(tmp_path):
    # Same real values, regrouped into sections with extra fields, as the longer layout does.
    source = primary_xml(require(GAOFEN_DIR / "GF2_PMS1_W91.0_N17.6_20200510_L1A0004793969"))
    fields = xml_fields(source)
    sections = {
        "ProductInfo": ["SatelliteID", "SensorID", "ProductID", "SceneID", "OrbitID", "ProductLevel", "ProduceTime", "Bands"],
        "ImagingInfo": ["StartTime", "EndTime", "CenterTime", "ImageGSD", "WidthInPixels", "HeightInPixels", "CloudPercent"],
        "AngleInfo": ["SolarAzimuth", "SolarZenith", "SatelliteAzimuth", "SatelliteZenith"],
        "GeoInfo": [f"{c}{a}" for c in ("TopLeft", "TopRight", "BottomRight", "BottomLeft") for a in ("Latitude", "Longitude")],
    }
    root = ET.Element("ProductMetaData")
    for section, names in sections.items():
        group = ET.SubElement(root, section)
        for name in names:
            ET.SubElement(group, name).text = fields[name]
        ET.SubElement(group, "Remark").text = "extra field"
    path = tmp_path / "sectioned-MSS1.xml"
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)

    assert read_gaofen_xml(path) == read_gaofen_xml(source)


def test_broken_xml_rejected(tmp_path):
    folder = tmp_path / "GF1_broken"
    folder.mkdir()
    (folder / "GF1_broken-MSS1.xml").write_text("<ProductMetaData><SatelliteID>GF1</SatelliteID></ProductMetaData>")

    with pytest.raises(ValueError, match="missing <SensorID>"):
        build_gaofen_items([folder], tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="no product metadata XML"):
        build_gaofen_items([tmp_path], tmp_path / "out")


def test_uncalibrated_bands_rejected_for_reflectance(items_by_folder):
    item = items_by_folder["GF2_PMS1_W91.0_N17.6_20200510_L1A0004793969"]

    with pytest.raises(ValueError, match="stores raw counts .* calibration"):
        describe_item(item)


def test_calibration_gives_toa_reflectance(tmp_path):
    folder = require(GAOFEN_DIR / "GF2_PMS1_W91.0_N17.6_20200510_L1A0004793969")
    calibration = {
        "MSS": [RadianceCalibration(gain=0.16, bias=0.0, esun=e) for e in (1960.0, 1820.0, 1520.0, 1070.0)],
        "PAN": [RadianceCalibration(gain=0.16, bias=0.0, esun=1360.0)],
    }
    item = build_gaofen_items([folder], tmp_path, calibration=calibration)[0]
    scene = describe_item(item, bands=["B1", "B2", "B3", "B4", "PAN"])

    sun_zenith = float(xml_fields(primary_xml(folder))["SolarZenith"])
    distance = earth_sun_distance_au(scene.datetime_utc.timetuple().tm_yday)
    dn = 500
    expected = math.pi * (0.16 * dn) * distance**2 / (1520.0 * math.cos(math.radians(sun_zenith)))
    band = scene.band("B3")
    assert dn * band.scale + band.offset == pytest.approx(expected, rel=1e-6)
    assert 0.0 < expected < 1.0
    assert scene.map_projected is False
    assert scene.epsg is None
    assert scene.band("PAN").gsd_m == 0.81
    assert [b.name for b in describe_item(item).reflectance_bands] == ["B1", "B2", "B3", "B4"]
    assert "gf2/pms L1A" in format_scene_table([scene])


def test_calibration_must_match_bands(tmp_path):
    folder = require(GAOFEN_DIR / "GF2_PMS1_W91.0_N17.6_20200510_L1A0004793969")

    with pytest.raises(ValueError, match="calibration for MSS .* has 2 entries; expected one per band"):
        build_gaofen_items([folder], tmp_path, calibration={"MSS": [RadianceCalibration(0.1, 0.0, 1900.0)] * 2})


def test_invalid_time_names_file_and_tag(tmp_path):
    source = primary_xml(require(GAOFEN_DIR / "GF2_PMS1_W91.0_N17.6_20200510_L1A0004793969"))
    path = tmp_path / "bad-MSS1.xml"
    text = source.read_text()
    path.write_text(text.replace("<CenterTime>2020-05-11 01:03:20</CenterTime>", "<CenterTime>11/05/2020</CenterTime>"))

    with pytest.raises(ValueError, match=r"bad-MSS1.xml: invalid <CenterTime> value '11/05/2020'"):
        read_gaofen_xml(path)


def test_fractional_seconds_parse(tmp_path):
    source = primary_xml(require(GAOFEN_DIR / "GF2_PMS1_W91.0_N17.6_20200510_L1A0004793969"))
    path = tmp_path / "frac-MSS1.xml"
    path.write_text(source.read_text().replace("01:03:20</CenterTime>", "01:03:20.5</CenterTime>"))

    assert read_gaofen_xml(path).center_utc == datetime(2020, 5, 10, 17, 3, 20, 500000, tzinfo=timezone.utc)


def test_calibration_file(tmp_path):
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"MSS": [{"gain": 0.1585, "bias": -0.87, "esun": 1966.8}] * 4,
                                "PAN": [{"gain": 0.163, "bias": 0.0, "esun": 1361.4}]}))

    calibration = read_calibration(path)

    assert calibration["MSS"][0] == RadianceCalibration(gain=0.1585, bias=-0.87, esun=1966.8)
    assert len(calibration["MSS"]) == 4
    assert len(calibration["PAN"]) == 1


def test_calibration_file_errors(tmp_path):
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"MSS": [{"gain": 0.1585, "esun": 1966.8}]}))

    with pytest.raises(ValueError, match="MSS band 1 entry .* is invalid; expected numbers gain, bias and esun"):
        read_calibration(path)
    path.write_text(json.dumps({"NIR": []}))
    with pytest.raises(ValueError, match="invalid key 'NIR'"):
        read_calibration(path)
