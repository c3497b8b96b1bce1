"""Scene table for the command line."""

from __future__ import annotations

from catalog_test_data import L2A_ITEM, read_json

from catalog import describe_item, format_scene_table
from catalog.table import footprint_area_km2


def test_table_rows(earth_search_page):
    scenes = [describe_item(item) for item in earth_search_page["features"][:3]]
    lines = format_scene_table(scenes).splitlines()

    assert lines[0].split() == ["date", "(UTC)", "cloud", "%", "sensor", "GSD", "m", "area", "km²", "item", "id"]
    assert set(lines[1]) == {"-", " "}
    assert lines[2].startswith("2025-07-31 13:03")
    assert "34.8" in lines[2]
    assert "sentinel-2b/msi" in lines[2]
    assert lines[2].endswith("S2B_24MVV_20250731_0_L2A")
    assert lines[-1] == "3 scenes"
    assert lines[2].index("sentinel-2b/msi") == lines[0].index("sensor")
    assert lines[3].index("S2B_24MVV_20250731_0_L1C") == lines[0].index("item id")


def test_footprint_area_of_full_tile():
    scene = describe_item(read_json(L2A_ITEM))

    # A full MGRS tile is 109.8 km x 109.8 km; this footprint is the whole tile.
    assert abs(footprint_area_km2(scene) - 109.8**2) / 109.8**2 < 0.03


def test_unknown_cloud_cover_shown_as_dash(earth_search_page):
    item = dict(earth_search_page["features"][0])
    item["properties"] = {k: v for k, v in item["properties"].items() if k != "eo:cloud_cover"}

    row = format_scene_table([describe_item(item)]).splitlines()[2]

    assert row.split()[2] == "-"


def test_empty_table():
    assert format_scene_table([]).splitlines()[-1] == "0 scenes"


def test_items_listed_even_when_uncalibrated(gaofen_catalog, earth_search_page):
    _, gaofen_items = gaofen_catalog
    table = format_scene_table([*gaofen_items, earth_search_page["features"][0]])
    rows = {line.split()[-1]: line for line in table.splitlines()[2:-1]}

    gf2 = rows["GF2_PMS1_W91.0_N17.6_20200510_L1A0004793969"]
    assert gf2.startswith("2020-05-10 17:03")
    assert "gf2/pms L1A" in gf2
    assert gf2.split()[5] == "0.81"
    assert "sentinel-2b/msi" in rows["S2B_24MVV_20250731_0_L2A"]
    assert table.splitlines()[-1] == "4 scenes"
