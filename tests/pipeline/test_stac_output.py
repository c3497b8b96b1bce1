"""Tests of the STAC Item that describes a mosaic and its exports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pystac
import pytest
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from pystac.extensions.classification import ClassificationExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.xarray_assets import XarrayAssetsExtension
from pystac.validation.stac_validator import JsonSchemaSTACValidator
from synthetic_predictions import LEGEND, PROVENANCE, ThreeScenes

from pipeline.completion import IncompleteStoreError, clear_complete
from pipeline.exports import export_cogs, write_quicklooks
from pipeline.mosaic import MosaicOptions, build_mosaic
from pipeline.stac_output import write_output_item


class CoreSchemaValidator(JsonSchemaSTACValidator):
    """Validate against the core STAC schemas that pystac ships, offline.

    The extension schemas live on stac-extensions.github.io, which tests do
    not reach; their fields are checked through pystac's extension classes.
    """

    def __init__(self) -> None:
        super().__init__()
        self.skipped_extensions: list[str] = []

    def validate_extension(self, stac_dict: dict[str, Any], stac_object_type: Any, stac_version: str,
                           extension_id: str, href: str | None = None) -> None:
        self.skipped_extensions.append(extension_id)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[ThreeScenes, str, Path, dict[str, Path]]:
    folder = tmp_path_factory.mktemp("stac")
    scenes = ThreeScenes(folder / "predictions")
    url = build_mosaic(scenes.urls, str(folder / "mosaic.zarr"), legend=LEGEND, provenance=PROVENANCE,
                       options=MosaicOptions(chunk_px=32, overview_min_px=16))
    exports = {**export_cogs(url, folder / "exports"), **write_quicklooks(url, folder / "exports")}
    return scenes, url, folder / "mosaic.stac.json", exports


@pytest.fixture(scope="module")
def item(written) -> pystac.Item:
    _, url, item_path, exports = written
    write_output_item(url, item_path, input_items=["S2A_TEST_1", "S2B_TEST_2"], exports=exports)
    return pystac.Item.from_file(str(item_path))


def test_output_item_validates(item: pystac.Item) -> None:
    validator = CoreSchemaValidator()
    schemas = item.validate(validator=validator)
    assert any(schema.endswith("item.json") for schema in schemas)
    assert sorted(validator.skipped_extensions) == sorted(item.stac_extensions)


def test_output_item_footprint_and_times(written, item: pystac.Item) -> None:
    scenes = written[0]
    west, south, east, north = scenes.geobox.extent.to_crs("EPSG:4326").boundingbox
    assert item.bbox == pytest.approx([west, south, east, north])
    assert item.geometry["type"] == "Polygon"
    assert item.datetime is None
    assert item.common_metadata.start_datetime.isoformat() == "2024-05-01T10:00:00+00:00"
    assert item.common_metadata.end_datetime.isoformat() == "2024-05-21T10:00:00+00:00"
    assert item.properties["fleximo:input_items"] == ["S2A_TEST_1", "S2B_TEST_2"]
    assert item.properties["fleximo:provenance"] == PROVENANCE


def test_output_item_projection(written, item: pystac.Item) -> None:
    scenes = written[0]
    projection = ProjectionExtension.ext(item)
    assert projection.code == "EPSG:32618"
    assert projection.shape == [96, 80]
    assert projection.transform == list(scenes.geobox.affine)[:6]
    assert projection.bbox == list(scenes.geobox.extent.boundingbox)


def test_output_item_assets_resolve(written, item: pystac.Item) -> None:
    _, url, _, exports = written
    assert Path(item.assets["zarr"].get_absolute_href()) == Path(url).resolve()
    assert item.assets["zarr"].to_dict()["href"] == "./mosaic.zarr"
    for name in ("landcover", "cloud_probability", "clear_observations"):
        assert Path(item.assets[f"zarr_{name}"].get_absolute_href()).is_dir()
    for key, path in exports.items():
        assert Path(item.assets[key].get_absolute_href()) == path.resolve()
    assert item.assets["landcover_cog"].media_type == pystac.MediaType.COG
    assert XarrayAssetsExtension.ext(item.assets["zarr"]).open_kwargs["decode_coords"] == "all"
    assert "overview" in item.assets["landcover_quicklook"].roles


def test_output_item_store_opens_with_its_kwargs(written, item: pystac.Item) -> None:
    asset = item.assets["zarr"]
    dataset = xr.open_dataset(asset.get_absolute_href(), **XarrayAssetsExtension.ext(asset).open_kwargs)
    assert dataset.rio.crs == written[0].geobox.crs.proj
    assert dataset["landcover"].dtype == "uint8"


def test_output_item_classification(item: pystac.Item) -> None:
    for key in ("zarr_landcover", "landcover_cog"):
        classes = ClassificationExtension.ext(item.assets[key]).classes
        assert [entry.value for entry in classes] == [0, 1, 2, 3, 255]
        assert classes[1].description == "tree cover"
        assert classes[1].color_hint == "33A02C"
        assert classes[-1].nodata is True


def test_output_item_links_input_items(written, tmp_path: Path) -> None:
    _, url, _, _ = written
    source = pystac.Item(id="S2A_TEST_1", geometry=None, bbox=None, datetime=None,
                         properties={"start_datetime": "2024-05-01T00:00:00Z", "end_datetime": "2024-05-01T00:00:00Z"})
    source.set_self_href(str(tmp_path / "S2A_TEST_1.json"))
    item = write_output_item(url, tmp_path / "item.json", input_items=[source], exports={})
    links = [link for link in item.links if link.rel == "derived_from"]
    assert [Path(link.get_absolute_href()).name for link in links] == ["S2A_TEST_1.json"]
    assert item.properties["fleximo:input_items"] == ["S2A_TEST_1"]


def test_output_item_rejects_incomplete_store(tmp_path: Path) -> None:
    scenes = ThreeScenes(tmp_path / "predictions")
    url = build_mosaic(scenes.urls, str(tmp_path / "mosaic.zarr"), legend=LEGEND, provenance=PROVENANCE,
                       options=MosaicOptions(chunk_px=32, overview_min_px=16))
    clear_complete(url)
    with pytest.raises(IncompleteStoreError, match="is not complete"):
        write_output_item(url, tmp_path / "item.json", input_items=[], exports={})
