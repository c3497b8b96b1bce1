"""Searches against a real pgstac STAC API, and retries/paging faults against a scripted one."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
import shapely.geometry
from scripted_stac_api import QUERY, Script, make_item, scripted_stac_api

from catalog import PRESETS, StacApiError, describe_item, search_items

FAST_RETRIES = {"max_retries": 3, "backoff_s": 0.01, "timeout_s": 5.0}


def expected_ids(items: list[dict[str, Any]], **conditions: Any) -> set[str]:
    """Ids of the real items that satisfy simple conditions, computed without the search code."""
    result = set()
    for item in items:
        properties = item["properties"]
        if "collections" in conditions and item["collection"] not in conditions["collections"]:
            continue
        if "max_cloud_cover" in conditions:
            cloud = properties.get("eo:cloud_cover")
            if cloud is None or cloud > conditions["max_cloud_cover"]:
                continue
        if "area" in conditions and not shapely.geometry.shape(item["geometry"]).intersects(conditions["area"]):
            continue
        if "day" in conditions and not properties["datetime"].startswith(conditions["day"]):
            continue
        result.add(item["id"])
    return result


# --- real pgstac server -------------------------------------------------------------------------


def test_paging_past_one_page(stac_api, real_items):
    paged = search_items(stac_api.url, collections=["sentinel-2-l2a"], page_size=2)
    single_page = search_items(stac_api.url, collections=["sentinel-2-l2a"], page_size=100)

    expected = expected_ids(real_items, collections={"sentinel-2-l2a"})
    assert len(expected) > 2 * 2
    assert [item.id for item in paged] == [item.id for item in single_page]
    assert {item.id for item in paged} == expected
    assert len(paged) == len(expected)


def test_cloud_cover_filter(stac_api, real_items):
    items = search_items(stac_api.url, collections=["sentinel-2-l2a", "sentinel-2-l1c"], max_cloud_cover=25.0)

    expected = expected_ids(real_items, collections={"sentinel-2-l2a", "sentinel-2-l1c"}, max_cloud_cover=25.0)
    assert {item.id for item in items} == expected
    assert all(item.properties["eo:cloud_cover"] <= 25.0 for item in items)
    assert len(items) < len(expected_ids(real_items, collections={"sentinel-2-l2a", "sentinel-2-l1c"}))


def test_bbox_filter(stac_api, real_items):
    bbox = (-39.5, -5.0, -38.5, -4.5)
    items = search_items(stac_api.url, bbox=bbox)

    expected = expected_ids(real_items, area=shapely.geometry.box(*bbox))
    assert expected
    assert {item.id for item in items} == expected


def test_intersects_point(stac_api, real_items):
    point = {"type": "Point", "coordinates": [-105.1019, 40.1672]}
    items = search_items(stac_api.url, intersects=point)

    assert {item.id for item in items} == expected_ids(real_items, area=shapely.geometry.shape(point))
    assert {item.collection_id for item in items} == {"sentinel-2-l2a", "landsat-c2-l2"}


def test_datetime_day_and_range(stac_api, real_items):
    day = search_items(stac_api.url, datetime="2025-07-31")
    older = search_items(stac_api.url, collections=["sentinel-2-l2a"], datetime="2019-01-01/2020-12-31")

    assert {item.id for item in day} == expected_ids(real_items, day="2025-07-31")
    assert {item.id for item in older} == {"S2A_29RKH_20200219_0_L2A", "S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531"}


def test_sort_and_limit(stac_api, real_items):
    clearest = search_items(stac_api.url, collections=["sentinel-2-l2a"], sortby="eo:cloud_cover", limit=3)
    newest_first = search_items(stac_api.url, collections=["sentinel-2-l2a"], sortby="-datetime")

    covers = sorted(
        item["properties"]["eo:cloud_cover"] for item in real_items if item["collection"] == "sentinel-2-l2a"
    )
    assert [item.properties["eo:cloud_cover"] for item in clearest] == covers[:3]
    dates = [item.datetime for item in newest_first]
    assert dates == sorted(dates, reverse=True)


def test_gaofen_items_served(stac_api):
    items = search_items(stac_api.url, collections=["gaofen-l1a"], max_cloud_cover=10)

    assert {item.id for item in items} == {
        "GF1_PMS1_E69.4_N33.3_20220624_L1A0006547030",
        "GF2_PMS1_W91.0_N17.6_20200510_L1A0004793969",
    }
    assert all(item.properties["fleximo:map_projected"] is False for item in items)


def test_served_items_describe_like_originals(stac_api, real_items):
    served = {item.id: item for item in search_items(stac_api.url, collections=["sentinel-2-l2a", "sentinel-2-c1-l2a"])}
    originals = {item["id"]: item for item in real_items if item["id"] in served}

    assert served
    for item_id, original in originals.items():
        assert describe_item(served[item_id]) == describe_item(original)


# --- scripted server: retries, failures, paging faults ------------------------------------------


def test_server_error_then_success_is_retried():
    script = Script(failures=[500, 500], pages=[[make_item("a"), make_item("b")]], number_matched=2)
    with scripted_stac_api(script) as url:
        items = search_items(url, **FAST_RETRIES)

    assert [item.id for item in items] == ["a", "b"]
    assert script.failures == []
    methods = [method for method, _, _ in script.requests]
    assert methods.count("GET") >= 3  # two failed landing-page requests, then the successful reads
    assert methods.count("POST") == 1


def test_rate_limit_and_timeout_are_retried():
    script = Script(failures=[429, "slow"], slow_s=1.0, pages=[[make_item("a")]], number_matched=1)
    with scripted_stac_api(script) as url:
        items = search_items(url, max_retries=3, backoff_s=0.01, timeout_s=0.3)

    assert [item.id for item in items] == ["a"]


def test_persistent_failure_raises_clear_error():
    script = Script(fail_always=503)
    with scripted_stac_api(script) as url:
        started = time.monotonic()
        with pytest.raises(StacApiError, match=rf"{url}.* failed with HTTP 503 after 3 retries") as error:
            search_items(url, **FAST_RETRIES)

    assert error.value.status_code == 503
    assert error.value.url == url
    assert len(script.requests) == 4  # the first request and three retries
    assert time.monotonic() - started < 5


def test_failure_during_search_names_search_url():
    script = Script(fail_searches=502, pages=[[make_item("a")]], number_matched=1)
    with scripted_stac_api(script) as url:
        with pytest.raises(StacApiError, match=rf"{url}/search failed with HTTP 502 after 3 retries") as error:
            search_items(url, **FAST_RETRIES)

    assert error.value.url == f"{url}/search"
    assert sum(method == "POST" for method, _, _ in script.requests) == 4


def test_duplicates_across_pages_are_dropped(caplog):
    pages = [[make_item("a"), make_item("b"), make_item("c")], [make_item("c"), make_item("d"), make_item("e")]]
    script = Script(pages=pages, number_matched=5)
    with scripted_stac_api(script) as url, caplog.at_level(logging.WARNING, logger="catalog.search"):
        items = search_items(url, **FAST_RETRIES)

    assert [item.id for item in items] == ["a", "b", "c", "d", "e"]
    assert "1 duplicate items" in caplog.text


def test_items_lost_while_paging_raise():
    pages = [[make_item("a"), make_item("b"), make_item("c")], [make_item("c"), make_item("d"), make_item("e")]]
    script = Script(pages=pages, number_matched=6)
    with scripted_stac_api(script) as url:
        with pytest.raises(StacApiError, match="matched 6 items but paging returned only 5 unique items after 2 passes"):
            search_items(url, **FAST_RETRIES)

    assert script.passes_started == 2


def test_items_lost_in_one_pass_recovered(caplog):
    # In the first pass item "c" shifts between pages and is missed; the second pass returns it.
    first = [[make_item("a"), make_item("b")], [make_item("d"), make_item("e")]]
    second = [[make_item("a"), make_item("c")], [make_item("b"), make_item("d"), make_item("e")]]
    script = Script(pages=first, later_passes=[second], number_matched=5)
    with scripted_stac_api(script) as url, caplog.at_level(logging.WARNING, logger="catalog.search"):
        items = search_items(url, **FAST_RETRIES)

    assert sorted(item.id for item in items) == ["a", "b", "c", "d", "e"]
    assert script.passes_started == 2
    assert "paging again" in caplog.text


def test_query_fallback_and_client_side_cloud_check():
    # The server claims the Query extension but ignores it: the client-side check still applies.
    pages = [[make_item("clear", 5.0), make_item("cloudy", 80.0), make_item("unknown", None)]]
    script = Script(pages=pages, number_matched=3, conforms_to=[*Script().conforms_to, QUERY])
    with scripted_stac_api(script) as url:
        items = search_items(url, max_cloud_cover=20, **FAST_RETRIES)

    search_bodies = [body for method, _, body in script.requests if method == "POST"]
    assert search_bodies[0]["query"] == {"eo:cloud_cover": {"lte": 20.0}}
    assert "filter" not in search_bodies[0]
    assert [item.id for item in items] == ["clear"]


def test_client_side_sort_without_server_support():
    pages = [[make_item("b", 50.0), make_item("a", 5.0)], [make_item("c", 20.0)]]
    script = Script(pages=pages, number_matched=3)
    with scripted_stac_api(script) as url:
        items = search_items(url, sortby="eo:cloud_cover", limit=2, page_size=2, **FAST_RETRIES)

    assert [item.id for item in items] == ["a", "c"]
    assert all("sortby" not in body for method, _, body in script.requests if method == "POST")


# --- arguments and presets ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"bbox": (10, 5, 0, 6)}, "invalid bbox"),
        ({"bbox": (0, 0, 1, 1), "intersects": {"type": "Point", "coordinates": [0, 0]}}, "either bbox or intersects"),
        ({"max_cloud_cover": 150}, "invalid max_cloud_cover 150"),
        ({"sortby": "gsd"}, "invalid sortby 'gsd'"),
        ({"datetime": "2024-13-01"}, "invalid datetime"),
        ({"datetime": "2024-05-02/2024-05-01"}, "start is after the end"),
        ({"limit": 0}, "invalid limit 0"),
    ],
)
def test_invalid_arguments_rejected(tmp_path, arguments, message):
    with pytest.raises(ValueError, match=message):
        search_items(str(tmp_path), **arguments)


def test_unknown_source_rejected():
    with pytest.raises(ValueError, match="neither a preset .*earth-search.*nor an existing local catalog path"):
        search_items("earth-serach")


def test_presets_cover_public_sentinel2_catalogs():
    assert PRESETS["earth-search"].url == "https://earth-search.aws.element84.com/v1"
    assert {"sentinel-2-l2a", "sentinel-2-c1-l2a", "sentinel-2-l1c"} <= set(PRESETS["earth-search"].collections)
    assert PRESETS["planetary-computer"].signing == "planetary-computer"
    assert PRESETS["cdse"].url.startswith("https://stac.dataspace.copernicus.eu")


def test_limit_applies_after_client_side_cloud_filter():
    # No filter or query support: the first two items are cloudy, so the limit must not stop paging early.
    pages = [[make_item("cloudy1", 90.0), make_item("cloudy2", 80.0)], [make_item("clear1", 5.0), make_item("clear2", 6.0)]]
    script = Script(pages=pages, number_matched=4)
    with scripted_stac_api(script) as url:
        items = search_items(url, max_cloud_cover=10, limit=2, page_size=2, **FAST_RETRIES)

    assert [item.id for item in items] == ["clear1", "clear2"]
