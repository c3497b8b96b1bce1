"""Fixtures for the ingest and store tests: scene descriptions of the real Sentinel-2 files."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
import rasterio
from rasterio.warp import transform_geom

from catalog.scene import BandInfo, SceneDescription
from tests.s3_server import s3_bucket, s3_server  # noqa: F401  (fixtures)

DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data"
L1C_DIR = DATA_DIR / "s2" / "T18SVG_20160112_L1C_crop"
L2A_DIR = DATA_DIR / "s2" / "S2A_29RKH_20200219_0_L2A_decimated"

S2_WAVELENGTHS_UM = {
    "B01": 0.443, "B02": 0.49, "B03": 0.56, "B04": 0.665, "B05": 0.705, "B06": 0.74, "B07": 0.783,
    "B08": 0.842, "B8A": 0.865, "B09": 0.945, "B10": 1.375, "B11": 1.61, "B12": 2.19,
}


def footprint_of(path: Path) -> tuple[str, tuple[float, float, float, float], int]:
    """Return the GeoJSON footprint in lon/lat, its bbox and the EPSG code of a raster."""
    with rasterio.open(path) as src:
        left, bottom, right, top = src.bounds
        ring = [(left, top), (right, top), (right, bottom), (left, bottom), (left, top)]
        geometry = transform_geom(src.crs, "EPSG:4326", {"type": "Polygon", "coordinates": [ring]})
        epsg = src.crs.to_epsg()
    lons = [point[0] for point in geometry["coordinates"][0]]
    lats = [point[1] for point in geometry["coordinates"][0]]
    return json.dumps(geometry), (min(lons), min(lats), max(lons), max(lats)), epsg


def describe_files(
    folder: Path,
    *,
    item_id: str,
    collection: str,
    when: datetime,
    band_names: list[str],
    scale: float = 1e-4,
    offset: float = 0.0,
    nodata: float | None = None,
    classification: tuple[str, ...] = (),
) -> SceneDescription:
    """Describe a folder of one-band GeoTIFFs named ``<band>.tif``, reading GSD from the files."""
    bands = []
    for name in band_names + list(classification):
        path = folder / f"{name}.tif"
        with rasterio.open(path) as src:
            gsd_m = abs(src.transform.a)
        is_class = name in classification
        bands.append(
            BandInfo(
                name=name,
                asset_key=name,
                href=str(path),
                wavelength_um=None if is_class else S2_WAVELENGTHS_UM[name],
                gsd_m=gsd_m,
                scale=1.0 if is_class else scale,
                offset=0.0 if is_class else offset,
                nodata=nodata,
                role="classification" if is_class else "reflectance",
            )
        )
    geometry, bbox, epsg = footprint_of(folder / f"{band_names[0]}.tif")
    return SceneDescription(
        item_id=item_id,
        collection=collection,
        platform="sentinel-2a",
        instrument="msi",
        datetime_utc=when,
        bbox_lonlat=bbox,
        geometry_json=geometry,
        epsg=epsg,
        bands=tuple(bands),
    )


L1C_BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]
L2A_BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]


@pytest.fixture(scope="session")
def l1c_dir() -> Path:
    """Folder of the real Sentinel-2 L1C crop, one GeoTIFF per band."""
    if not L1C_DIR.is_dir():
        pytest.skip(f"real Sentinel-2 data not found at {L1C_DIR}")
    return L1C_DIR


@pytest.fixture(scope="session")
def l2a_dir() -> Path:
    """Folder of the real decimated Sentinel-2 L2A scene with its STAC item."""
    if not L2A_DIR.is_dir():
        pytest.skip(f"real Sentinel-2 data not found at {L2A_DIR}")
    return L2A_DIR


@pytest.fixture(scope="session")
def l1c_scene() -> SceneDescription:
    """The real Sentinel-2 L1C crop of tile 18SVG: 13 bands at 10, 20 and 60 m, no nodata."""
    if not L1C_DIR.is_dir():
        pytest.skip(f"real Sentinel-2 data not found at {L1C_DIR}")
    return describe_files(
        L1C_DIR,
        item_id="S2A_18SVG_20160112_L1C_crop",
        collection="sentinel-2-l1c",
        when=datetime(2016, 1, 12, 15, 56, 42, tzinfo=timezone.utc),
        band_names=L1C_BANDS,
    )


@pytest.fixture(scope="session")
def l2a_scene() -> SceneDescription:
    """The real decimated Sentinel-2 L2A scene of tile 29RKH with SCL, nodata 0."""
    if not L2A_DIR.is_dir():
        pytest.skip(f"real Sentinel-2 data not found at {L2A_DIR}")
    return describe_files(
        L2A_DIR,
        item_id="S2A_29RKH_20200219_0_L2A",
        collection="sentinel-2-l2a",
        when=datetime(2020, 2, 19, 11, 34, 25, tzinfo=timezone.utc),
        band_names=L2A_BANDS,
        nodata=0,
        classification=("SCL",),
    )


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
