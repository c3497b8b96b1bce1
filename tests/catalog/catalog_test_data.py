"""Paths of the shared real test data and small helpers to read it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

# Resolved, because the builders store resolved hrefs and shared/ may be a link.
DATA_DIR = (Path(__file__).resolve().parents[2].parent / "shared" / "data").resolve()
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


def gaofen_delivery_dirs() -> list[Path]:
    """The real Gaofen delivery folders (metadata and RPCs, no imagery)."""
    return sorted(p for p in require(GAOFEN_DIR).iterdir() if p.is_dir() and p.name.startswith("GF"))
