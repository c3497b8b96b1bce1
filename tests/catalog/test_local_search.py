"""Offline search of local catalogs: same results as a real STAC API for the same parameters."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from catalog import search_items

PARAMETER_SETS = [
    {},
    {"collections": ["sentinel-2-l2a"]},
    {"collections": ["sentinel-2-l2a", "sentinel-2-l1c"], "max_cloud_cover": 25.0},
    {"bbox": (-39.5, -5.0, -38.5, -4.5)},
    {"intersects": {"type": "Point", "coordinates": [-105.1019, 40.1672]}},
    {"datetime": "2025-07-31"},
    {"datetime": "2019-01-01/2020-12-31"},
    {"datetime": "../2021-01-01", "collections": ["gaofen-l1a"]},
    {"collections": ["gaofen-l1a"], "max_cloud_cover": 10},
    {"collections": ["sentinel-2-l2a"], "sortby": "eo:cloud_cover", "limit": 3},
    {"collections": ["sentinel-2-l2a", "sentinel-2-c1-l2a"], "sortby": "-datetime"},
]


@pytest.fixture(scope="module")
def item_folder(tmp_path_factory, real_items, gaofen_catalog) -> Path:
    """A folder of loose item JSON files: the real items plus the Gaofen items."""
    folder = tmp_path_factory.mktemp("items")
    for item in real_items:
        (folder / f"{item['collection']}__{item['id']}.json").write_text(json.dumps(item))
    for item in gaofen_catalog[1]:
        (folder / f"{item.id}.json").write_text(json.dumps(item.to_dict(transform_hrefs=False)))
    return folder


@pytest.mark.parametrize("parameters", PARAMETER_SETS, ids=[str(p) for p in PARAMETER_SETS])
def test_same_results_as_stac_api(stac_api, item_folder, parameters):
    local = search_items(str(item_folder), **parameters)
    remote = search_items(stac_api.url, **parameters)

    assert local, parameters
    local_keys = [(item.collection_id, item.id) for item in local]
    remote_keys = [(item.collection_id, item.id) for item in remote]
    assert sorted(local_keys) == sorted(remote_keys)
    if "sortby" in parameters:
        # Ties (same datetime in two collections) may come in any order, so compare the sort keys.
        field = parameters["sortby"].lstrip("+-")
        assert [item.properties[field] for item in local] == [item.properties[field] for item in remote]


def test_static_catalog_search(gaofen_catalog):
    out_dir, _ = gaofen_catalog

    from_folder = search_items(out_dir, bbox=(60, 20, 95, 40))
    from_file = search_items(str(out_dir / "catalog.json"), bbox=(60, 20, 95, 40))

    assert [item.id for item in from_folder] == [item.id for item in from_file]
    assert {item.id for item in from_folder} == {
        "GF1_PMS1_E69.4_N33.3_20220624_L1A0006547030",
        "GF1_WFV3_E89.0_N23.9_20200523_L1A0004819525",
    }
    assert all(Path(item.assets["MSS"].href).is_absolute() for item in from_folder)


def test_duplicate_ids_kept_once(tmp_path, real_items, caplog):
    item = real_items[0]
    for name in ("a.json", "b.json"):
        (tmp_path / name).write_text(json.dumps(item))

    with caplog.at_level(logging.WARNING, logger="catalog.local_search"):
        found = search_items(str(tmp_path))

    assert [i.id for i in found] == [item["id"]]
    assert "more than once" in caplog.text


def test_time_range_items_match_on_start(tmp_path, real_items):
    item = json.loads(json.dumps(real_items[0]))
    item["properties"]["start_datetime"] = item["properties"]["datetime"]
    item["properties"]["end_datetime"] = "2025-08-01T00:00:00Z"
    item["properties"]["datetime"] = None
    (tmp_path / "item.json").write_text(json.dumps(item))

    assert len(search_items(str(tmp_path), datetime="2025-07-31")) == 1
    assert search_items(str(tmp_path), datetime="2025-07-30") == []


def test_invalid_json_file_rejected(tmp_path):
    (tmp_path / "broken.json").write_text("{not json")

    with pytest.raises(ValueError, match="broken.json: invalid JSON"):
        search_items(str(tmp_path))
