"""Tests of asset reads: retries of transient failures, clear errors, no silent nodata."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import rasterio
import rasterio.errors
from odc.geo.geobox import GeoBox

from pipeline import layout
from pipeline.grid import plan_grid
from pipeline.ingest import load_observation
from pipeline.reading import (
    AssetReadError,
    NotGeoreferencedError,
    RetryPolicy,
    check_scenes,
    gdal_path,
    is_transient,
    read_band,
)
from tests.pipeline.flaky_http import FlakyFileServer

FAST_RETRY = RetryPolicy(attempts=3, backoff_s=0.01, max_backoff_s=0.02)


@pytest.fixture(scope="module")
def file_server(l1c_dir):
    with FlakyFileServer(l1c_dir) as server:
        yield server


def served_scene(scene, server, names):
    """The scene restricted to ``names``, with each band read over HTTP from ``server``."""
    bands = tuple(replace(scene.band(name), href=server.url(f"{name}.tif")) for name in names)
    return replace(scene, bands=bands)


def test_read_fails_twice_then_gives_clean_cube(l1c_scene, file_server):
    local = replace(l1c_scene, bands=(l1c_scene.band("B05"), l1c_scene.band("B8A")))
    remote = served_scene(l1c_scene, file_server, ["B05", "B8A"])
    geobox = plan_grid([local], resolution_m=20)
    clean = load_observation([local], geobox, chunk_px=512, retry=FAST_RETRY)[layout.REFLECTANCE_VAR].values

    file_server.fail_next("B8A.tif", 2)
    flaky = load_observation([remote], geobox, chunk_px=512, retry=FAST_RETRY)[layout.REFLECTANCE_VAR].values

    np.testing.assert_array_equal(flaky, clean)
    statuses = [status for _, name, status in file_server.requests() if name == "B8A.tif"]
    assert statuses[:2] == ["503", "503"]
    assert "206" in statuses[2:]


def test_truncated_reads_are_retried(l1c_dir, file_server):
    with rasterio.open(l1c_dir / "B06.tif") as src:
        geobox = GeoBox(src.shape, src.transform, src.crs.to_wkt())
        expected = src.read(1).astype(np.float32)
    band = replace(_band("B06"), href=file_server.url("B06.tif"))

    file_server.truncate_next("B06.tif", 2)
    values = read_band(band, geobox, resampling="nearest", retry=FAST_RETRY)

    np.testing.assert_array_equal(values, expected)
    statuses = [status for _, name, status in file_server.requests() if name == "B06.tif"]
    assert statuses.count("truncated") == 2


def test_asset_always_failing_raises_with_url(l1c_scene, file_server):
    remote = served_scene(l1c_scene, file_server, ["B07"])
    geobox = plan_grid([remote], resolution_m=20)
    file_server.fail_next("B07.tif", 100)

    ds = load_observation([remote], geobox, chunk_px=512, retry=FAST_RETRY)

    with pytest.raises(AssetReadError, match=r"failed to read asset http://127\.0\.0\.1:\d+/B07\.tif \(band B07\) after 3 attempts: .*503"):
        ds[layout.REFLECTANCE_VAR].compute()
    file_server.fail_next("B07.tif", 0)


def test_missing_asset_fails_without_retry(l1c_scene, file_server):
    band = replace(_band("B07"), href=file_server.url("absent.tif"))
    geobox = plan_grid([l1c_scene], resolution_m=60)

    with pytest.raises(AssetReadError, match=r"absent\.tif .*404") as caught:
        read_band(band, geobox, retry=FAST_RETRY)

    assert caught.value.href == band.href
    assert len([name for _, name, _ in file_server.requests() if name == "absent.tif"]) == 1


def test_truncated_local_file_never_becomes_nodata(l1c_dir, tmp_path):
    source = (l1c_dir / "B02.tif").read_bytes()
    (tmp_path / "B02.tif").write_bytes(source[: len(source) // 2])
    band = replace(_band("B02"), href=str(tmp_path / "B02.tif"))
    with rasterio.open(l1c_dir / "B02.tif") as src:
        geobox = GeoBox(src.shape, src.transform, src.crs.to_wkt())

    with pytest.raises(AssetReadError, match=r"B02\.tif \(band B02\) after 3 attempts"):
        read_band(band, geobox, retry=FAST_RETRY)


def test_asset_without_crs_or_rpcs_is_rejected(tmp_path):
    path = tmp_path / "pixels.tif"
    with rasterio.open(path, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint16") as dst:
        dst.write(np.ones((1, 8, 8), dtype=np.uint16))
    band = replace(_band("B02"), href=str(path))
    geobox = GeoBox.from_bbox((500_000, 0, 500_080, 80), "EPSG:32631", resolution=10)

    with pytest.raises(NotGeoreferencedError, match="no map projection and no RPCs"):
        read_band(band, geobox, retry=FAST_RETRY)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (rasterio.errors.RasterioIOError("HTTP response code: 503"), True),
        (rasterio.errors.RasterioIOError("HTTP response code: 429"), True),
        (rasterio.errors.RasterioIOError("HTTP response code: 404"), False),
        (rasterio.errors.RasterioIOError("'x.tif' does not exist in the file system"), False),
        (TimeoutError("read timed out"), True),
        (ConnectionResetError("reset by peer"), True),
        (ValueError("HTTP response code: 503"), False),
    ],
)
def test_is_transient(error, expected):
    assert is_transient(error) is expected


def test_is_transient_follows_cause_chain():
    try:
        try:
            raise rasterio.errors.RasterioIOError("TIFFFillTile:Read error at row 0; got 7120 bytes, expected 96031")
        except rasterio.errors.RasterioIOError as inner:
            raise rasterio.errors.WarpOperationError("Chunk and warp failed") from inner
    except rasterio.errors.WarpOperationError as outer:
        assert is_transient(outer)


@pytest.mark.parametrize(
    ("href", "expected"),
    [
        ("s3://bucket/a/b.tif", "/vsis3/bucket/a/b.tif"),
        ("https://host/b.tif", "/vsicurl/https://host/b.tif"),
        ("gs://bucket/b.tif", "/vsigs/bucket/b.tif"),
        ("/data/b.tif", "/data/b.tif"),
    ],
)
def test_gdal_path(href, expected):
    assert gdal_path(href) == expected


@pytest.mark.parametrize("kwargs", [{"attempts": 0}, {"backoff_s": -1.0}])
def test_retry_policy_rejects_bad_values(kwargs):
    with pytest.raises(ValueError, match="RetryPolicy"):
        RetryPolicy(**kwargs)


def test_retry_policy_backoff_doubles_to_limit():
    policy = RetryPolicy(attempts=6, backoff_s=1.0, max_backoff_s=3.0)

    delays = [policy.delay_s(failures) for failures in range(1, 5)]

    assert 1.0 <= delays[0] <= 1.25
    assert 2.0 <= delays[1] <= 2.5
    assert 3.0 <= delays[2] <= 3.75
    assert 3.0 <= delays[3] <= 3.75


def _band(name: str):
    from catalog.scene import BandInfo

    return BandInfo(name=name, asset_key=name, href="", wavelength_um=0.5, gsd_m=10.0)


def test_check_scenes_skips_unreadable_scene(l1c_scene, file_server):
    good = served_scene(l1c_scene, file_server, ["B02", "B05"])
    broken_bands = (good.band("B02"), replace(good.band("B05"), href=file_server.url("gone.tif")))
    broken = replace(l1c_scene, item_id="broken", bands=broken_bands)

    kept, skipped = check_scenes([broken, good], on_error="skip", retry=FAST_RETRY)

    assert kept == [good]
    assert len(skipped) == 1
    assert skipped[0].item_id == "broken"
    assert skipped[0].href == file_server.url("gone.tif")
    assert "404" in skipped[0].reason
    assert skipped[0].to_dict() == {"item_id": "broken", "href": file_server.url("gone.tif"), "reason": skipped[0].reason}


def test_check_scenes_raises_by_default(l1c_scene, file_server):
    broken = replace(l1c_scene, bands=(replace(l1c_scene.band("B02"), href=file_server.url("gone.tif")),))

    with pytest.raises(AssetReadError, match=r"gone\.tif"):
        check_scenes([broken], retry=FAST_RETRY)


def test_check_scenes_retries_transient_failures(l1c_scene, file_server):
    scene = served_scene(l1c_scene, file_server, ["B03"])
    file_server.fail_next("B03.tif", 2)

    kept, skipped = check_scenes([scene], on_error="skip", retry=FAST_RETRY)

    assert kept == [scene]
    assert skipped == []


def test_check_scenes_rejects_unknown_mode(l1c_scene):
    with pytest.raises(ValueError, match="on_error must be 'raise' or 'skip'"):
        check_scenes([l1c_scene], on_error="ignore")


def test_blocks_skip_scenes_they_miss(l1c_scene, file_server):
    import json

    import shapely

    near = served_scene(l1c_scene, file_server, ["B02"])
    far_footprint = shapely.affinity.translate(shapely.geometry.shape(json.loads(near.geometry_json)), xoff=0.5)
    far = replace(
        near,
        item_id="far",
        geometry_json=json.dumps(shapely.geometry.mapping(far_footprint)),
        bbox_lonlat=far_footprint.bounds,
        bands=(replace(near.band("B02"), href=file_server.url("B02-far.tif")),),
    )
    geobox = plan_grid([near], resolution_m=20)

    stored = load_observation([far, near], geobox, chunk_px=256, retry=FAST_RETRY)[layout.REFLECTANCE_VAR].values

    assert (stored != layout.REFLECTANCE_FILL).all()
    assert "B02-far.tif" not in [name for _, name, _ in file_server.requests()]


def write_tiff_with_stale_overviews(path) -> GeoBox:
    """Write a 512 px GeoTIFF whose overviews contain 1000 while the full resolution contains 2000.

    The difference shows which level a read came from.
    """
    from rasterio.enums import Resampling
    from rasterio.transform import from_origin

    profile = {
        "driver": "GTiff", "width": 512, "height": 512, "count": 1, "dtype": "uint16",
        "crs": "EPSG:32633", "transform": from_origin(500_000, 5_000_000, 10, 10), "tiled": True, "nodata": 0,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.full((1, 512, 512), 1000, dtype=np.uint16))
        dst.build_overviews([2, 4, 8], Resampling.average)
    with rasterio.open(path, "r+") as dst:
        dst.write(np.full((1, 512, 512), 2000, dtype=np.uint16))
    with rasterio.open(path) as src:
        return GeoBox(src.shape, src.transform, src.crs.to_wkt())


@pytest.mark.parametrize(
    ("zoom", "overviews", "expected"),
    [
        (4, True, 1000),  # the 4x overview
        (6, True, 1000),  # the 4x overview, the coarsest still finer than the grid
        (4, False, 2000),  # full resolution
        (1.5, True, 2000),  # no overview as fine as a 15 m grid
    ],
)
def test_read_band_overview_choice(tmp_path, zoom, overviews, expected):
    full = write_tiff_with_stale_overviews(tmp_path / "stale.tif")
    band = replace(_band("B02"), href=str(tmp_path / "stale.tif"), nodata=0)

    values = read_band(band, full.zoom_out(zoom), resampling="bilinear", overviews=overviews, retry=FAST_RETRY)

    assert np.nanmin(values) == expected
    assert np.nanmax(values) == expected
