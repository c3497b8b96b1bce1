"""Loading items into pgstac: collection extents and input checks (loading itself runs in the server fixture)."""

from __future__ import annotations

import copy

import pystac
import pytest

from catalog import load_into_pgstac, search_items
from catalog.pgstac_load import collection_for_items


def test_collection_extent_covers_items(real_items):
    items = [pystac.Item.from_dict(copy.deepcopy(item), migrate=False) for item in real_items[:10]]

    collection = collection_for_items("sentinel-2-l2a", items)

    west, south, east, north = collection["extent"]["spatial"]["bbox"][0]
    for item in items:
        assert west <= item.bbox[0]
        assert item.bbox[2] <= east
        assert south <= item.bbox[1]
        assert item.bbox[3] <= north
    start, end = collection["extent"]["temporal"]["interval"][0]
    assert start.startswith("2025-07-31T13:03")
    assert start <= end


def test_items_without_collection_rejected(real_items):
    item = copy.deepcopy(real_items[0])
    del item["collection"]

    with pytest.raises(ValueError, match="items without a collection id cannot be loaded"):
        load_into_pgstac([item], "postgresql://nobody@127.0.0.1:1/none")


def test_loaded_items_searchable(stac_api, gaofen_catalog):
    # The server fixture loaded the Gaofen items through load_into_pgstac.
    _, items = gaofen_catalog

    served = search_items(stac_api.url, collections=["gaofen-l1a"])

    assert sorted(item.id for item in served) == sorted(item.id for item in items)
    assert all(item.assets["MSS-rpc"].href.endswith(".rpb") for item in served)
