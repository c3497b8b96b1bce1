"""Fixtures for the ingest, reading and store tests.

The real Sentinel-2 scenes are described the way a job reads them: a local
STAC catalog is built from the files and each item goes through
``catalog.describe_item``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from catalog import build_local_catalog, describe_item
from catalog.scene import SceneDescription
from tests.s3_server import s3_bucket, s3_server  # noqa: F401  (fixtures)

DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data"
L1C_DIR = DATA_DIR / "s2" / "T18SVG_20160112_L1C_crop"
L2A_DIR = DATA_DIR / "s2" / "S2A_29RKH_20200219_0_L2A_decimated"


def _require(folder: Path) -> Path:
    if not folder.is_dir():
        pytest.skip(f"real Sentinel-2 data not found at {folder} (the shared data folder beside the project)")
    return folder


@pytest.fixture(scope="session")
def l1c_dir() -> Path:
    """Folder of the real Sentinel-2 L1C crop of tile 18SVG, one GeoTIFF per band."""
    return _require(L1C_DIR)


@pytest.fixture(scope="session")
def l2a_dir() -> Path:
    """Folder of the real decimated Sentinel-2 L2A scene of tile 29RKH with its STAC item."""
    return _require(L2A_DIR)


@pytest.fixture(scope="session")
def gaofen_dir() -> Path:
    """Folder of the real Gaofen Level-1A metadata and RPC files (no imagery)."""
    folder = DATA_DIR / "gaofen"
    if not folder.is_dir():
        pytest.skip(f"real Gaofen metadata not found at {folder} (the shared data folder beside the project)")
    return folder


@pytest.fixture(scope="session")
def l1c_scene(l1c_dir, tmp_path_factory) -> SceneDescription:
    """The L1C crop through a local STAC item: 13 bands at 10, 20 and 60 m, scale 1e-4, no offset."""
    (item,) = build_local_catalog(
        [l1c_dir],
        tmp_path_factory.mktemp("l1c-catalog"),
        sensor="sentinel-2a",
        collection="sentinel-2-l1c",
        datetime="2016-01-12T15:56:42Z",
        offset=0.0,
    )
    return describe_item(item)


@pytest.fixture(scope="session")
def l2a_scene(l2a_dir, tmp_path_factory) -> SceneDescription:
    """The decimated L2A scene through its Earth Search item (hrefs rewritten to the local files), with SCL."""
    (item,) = build_local_catalog([l2a_dir], tmp_path_factory.mktemp("l2a-catalog"), collection="sentinel-2-l2a")
    return describe_item(item)


@pytest.fixture(scope="module")
def cluster_client(s3_server):
    """A real LocalCluster with two worker processes, started after the S3 test server.

    The workers inherit the S3 server's environment, so they can write to it.
    """
    from distributed import Client, LocalCluster

    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=":0",
        memory_limit="2GiB",
    ) as cluster, Client(cluster) as client:
        yield client
