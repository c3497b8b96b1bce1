"""Fixtures for the catalog tests: the real recorded STAC items and a real pgstac STAC API."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from catalog_test_data import (
    EARTH_SEARCH_MIXED,
    EARTH_SEARCH_PAGE,
    L2A_ITEM,
    PLANETARY_COMPUTER_ITEM,
    STAC_DIR,
    gaofen_delivery_dirs,
    read_json,
)
from pgstac_server import PgstacServer, find_postgres_bin, running_pgstac

from catalog import build_gaofen_items


@pytest.fixture(scope="session")
def earth_search_page() -> dict[str, Any]:
    """The recorded Earth Search v1 search page (10 items of three Sentinel-2 collections)."""
    return read_json(STAC_DIR / EARTH_SEARCH_PAGE)


@pytest.fixture(scope="session")
def real_items(earth_search_page: dict[str, Any]) -> list[dict[str, Any]]:
    """Every real recorded item: Earth Search (S2 L1C/L2A/C1, Landsat), Planetary Computer, the 29RKH L2A."""
    items = list(earth_search_page["features"])
    items += read_json(STAC_DIR / EARTH_SEARCH_MIXED)["features"]
    items.append(read_json(STAC_DIR / PLANETARY_COMPUTER_ITEM))
    items.append(read_json(L2A_ITEM))
    return items


@pytest.fixture(scope="session")
def gaofen_catalog(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Any]]:
    """A local catalog built from every real Gaofen delivery: (catalog folder, items)."""
    out_dir = tmp_path_factory.mktemp("gaofen-catalog")
    return out_dir, build_gaofen_items(gaofen_delivery_dirs(), out_dir)


@pytest.fixture(scope="session")
def stac_api(real_items: list[dict[str, Any]], gaofen_catalog: tuple[Path, list[Any]]) -> Iterator[PgstacServer]:
    """A pgstac STAC API on 127.0.0.1 loaded with the real Sentinel-2/Landsat items and the Gaofen items."""
    if find_postgres_bin() is None:
        pytest.skip("PostgreSQL with PostGIS is not installed (Debian: postgresql postgresql-15-postgis-3)")
    items = [dict(item) for item in real_items]
    items += [item.to_dict(transform_hrefs=False) for item in gaofen_catalog[1]]

    # /tmp directly: the "postgres" user cannot enter pytest's per-user temporary folders.
    workdir = Path(tempfile.mkdtemp(prefix="fleximo-pgstac-"))
    with running_pgstac(workdir, items) as server:
        yield server
