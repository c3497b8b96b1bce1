"""Tests of the job grid: CRS, resolution, snapping and clipping."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import rasterio
import shapely
from odc.geo.geobox import GeoBox

from pipeline.grid import block_geoboxes, plan_grid


def test_plan_grid_equals_source_10m_grid(l1c_scene, l1c_dir):
    geobox = plan_grid([l1c_scene])

    with rasterio.open(l1c_dir / "B02.tif") as src:
        assert geobox.crs.epsg == src.crs.to_epsg()
        assert tuple(geobox.affine)[:6] == tuple(src.transform)[:6]
        assert geobox.shape.yx == src.shape


def test_plan_grid_coarser_resolution_keeps_origin(l1c_scene, l1c_dir):
    geobox = plan_grid([l1c_scene], resolution_m=20)

    with rasterio.open(l1c_dir / "B05.tif") as src:
        assert tuple(geobox.affine)[:6] == tuple(src.transform)[:6]
        assert geobox.shape.yx == src.shape


def test_plan_grid_clips_to_bbox_and_snaps(l1c_scene):
    west, south, east, north = l1c_scene.bbox_lonlat
    bbox = (west + 0.02, south + 0.02, west + 0.05, south + 0.04)

    geobox = plan_grid([l1c_scene], bbox_lonlat=bbox, resolution_m=30)

    full = plan_grid([l1c_scene])
    assert geobox.affine.c % 30 == 0
    assert geobox.affine.f % 30 == 0
    assert geobox.width < full.width / 3
    assert full.extent.contains(geobox.extent)


def test_plan_grid_bbox_covers_area_of_interest(l1c_scene):
    west, south, _, _ = l1c_scene.bbox_lonlat
    bbox = (west + 0.02, south + 0.02, west + 0.05, south + 0.04)

    geobox = plan_grid([l1c_scene], bbox_lonlat=bbox, resolution_m=30)

    aoi = shapely.box(*bbox)
    covered = shapely.geometry.shape(geobox.extent.to_crs("EPSG:4326", resolution=30).geom.__geo_interface__)
    assert covered.contains(aoi)


@pytest.mark.parametrize("crs", [32617, "EPSG:32617", "+proj=utm +zone=17 +datum=WGS84 +units=m +no_defs"])
def test_plan_grid_named_crs(l1c_scene, crs):
    geobox = plan_grid([l1c_scene], crs=crs)

    assert geobox.crs.to_epsg() == 32617
    assert geobox.resolution.x == 10
    assert geobox.affine.c % 10 == 0


def test_plan_grid_default_crs_is_centroid_utm_zone(l1c_scene):
    # A footprint straddling 6 degrees W (the 29/30 boundary), mostly in zone 30.
    footprint = shapely.box(-6.2, 40.0, -4.0, 40.5)
    scene = replace(
        l1c_scene,
        bbox_lonlat=footprint.bounds,
        geometry_json=json.dumps(shapely.geometry.mapping(footprint)),
        epsg=32630,
    )

    geobox = plan_grid([scene], resolution_m=100)

    assert geobox.crs.epsg == 32630


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"resolution_m": 0}, "resolution_m must be a positive"),
        ({"resolution_m": float("nan")}, "resolution_m must be a positive"),
        ({"crs": 4326}, "projected with metre units"),
        ({"bbox_lonlat": (10.0, 10.0, 11.0, 11.0)}, "does not overlap"),
        ({"bbox_lonlat": (10.0, 10.0, 9.0, 11.0)}, "west < east"),
    ],
)
def test_plan_grid_rejects_bad_input(l1c_scene, kwargs, message):
    with pytest.raises(ValueError, match=message):
        plan_grid([l1c_scene], **kwargs)


def test_plan_grid_rejects_no_scenes():
    with pytest.raises(ValueError, match="at least one scene"):
        plan_grid([])


@pytest.mark.parametrize(
    ("shape", "block_px", "expected_blocks", "last_shape"),
    [
        ((1020, 1020), 512, 4, (508, 508)),
        ((1024, 512), 512, 2, (512, 512)),
        ((100, 300), 128, 3, (100, 44)),
    ],
)
def test_block_geoboxes_cover_grid(shape, block_px, expected_blocks, last_shape):
    geobox = GeoBox.from_bbox((0, 0, shape[1] * 10, shape[0] * 10), "EPSG:32633", resolution=10)

    blocks = block_geoboxes(geobox, block_px)

    assert len(blocks) == expected_blocks
    assert list(blocks.values())[-1].shape.yx == last_shape
    assert sum(block.width * block.height for block in blocks.values()) == shape[0] * shape[1]
    first = blocks[(0, 0)]
    assert tuple(first.affine)[:6] == tuple(geobox.affine)[:6]
