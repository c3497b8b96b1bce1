"""Fixtures for the catalog tests: the real recorded STAC items and a real pgstac STAC API."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pgstac_server import PgstacServer, find_postgres_bin, running_pgstac

from catalog import build_gaofen_items

DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data"
STAC_DIR = DATA_DIR / "stac"
GAOFEN_DIR = DATA_DIR / "gaofen"
S2_DIR = DATA_DIR / "s2"
SAFE_DIR = DATA_DIR / "s2_safe_metadata"

EARTH_SEARCH_PAGE = "earth-search-v1_search_sentinel-2-l2a_l1c_c1-l2a_T24M_2025-07-31.json"
EARTH_SEARCH_MIXED = "earth-search-v1_search_sentinel-2-l2a_landsat-c2-l2_2023-10-08.json"
PLANETARY_COMPUTER_ITEM = "planetary-computer_item_S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531.json"
L2A_ITEM = S2_DIR / "S2A_29RKH_20200219_0_L2A_decimated" / "S2A_29RKH_20200219_0_L2A.json"


def require(path: Path) -> Path:
    """Return ``path``, or skip the test when the shared real data is not there."""
    if not path.exists():
        pytest.skip(f"real test data {path} is absent (expected the shared data folder beside the project)")
    return path


def read_json(path: Path) -> Any:
    return json.loads(require(path).read_text(encoding="utf-8"))


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


def gaofen_delivery_dirs() -> list[Path]:
    """The real Gaofen delivery folders (metadata and RPCs, no imagery)."""
    return sorted(p for p in require(GAOFEN_DIR).iterdir() if p.is_dir() and p.name.startswith("GF"))


@pytest.fixture(scope="session")
def gaofen_catalog(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Any]]:
    """A local catalog built from every real Gaofen delivery: (catalog folder, items)."""
    out_dir = tmp_path_factory.mktemp("gaofen-catalog")
    return out_dir, build_gaofen_items(gaofen_delivery_dirs(), out_dir)


def collection_for(collection_id: str) -> dict[str, Any]:
    """A minimal valid STAC collection for the test server."""
    return {
        "type": "Collection",
        "stac_version": "1.0.0",
        "id": collection_id,
        "description": f"test collection {collection_id}",
        "license": "proprietary",
        "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]}, "temporal": {"interval": [[None, None]]}},
        "links": [],
    }


@pytest.fixture(scope="session")
def stac_api(real_items: list[dict[str, Any]], gaofen_catalog: tuple[Path, list[Any]]) -> Iterator[PgstacServer]:
    """A pgstac STAC API on 127.0.0.1 loaded with the real Sentinel-2/Landsat items and the Gaofen items."""
    if find_postgres_bin() is None:
        pytest.skip("PostgreSQL with PostGIS is not installed (Debian: postgresql postgresql-15-postgis-3)")
    items = [dict(item) for item in real_items]
    items += [item.to_dict(transform_hrefs=False) for item in gaofen_catalog[1]]
    collections = [collection_for(cid) for cid in sorted({item["collection"] for item in items})]

    # /tmp directly: the "postgres" user cannot enter pytest's per-user temporary folders.
    workdir = Path(tempfile.mkdtemp(prefix="fleximo-pgstac-"))
    with running_pgstac(workdir, collections, items) as server:
        yield server
