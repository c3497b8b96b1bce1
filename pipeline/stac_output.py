"""STAC Item that describes a finished mosaic and its exports.

The Item has the mosaic's footprint (EPSG:4326 polygon and bbox) and the
time range of the input observations (``start_datetime`` and
``end_datetime``, with ``datetime`` null). It uses the projection extension
(``proj:code`` or ``proj:wkt2``, ``proj:shape``, ``proj:transform``,
``proj:bbox``), the classification extension on the land-cover assets, and
the xarray-assets extension on the store asset.
Assets: the Zarr store, each of its layers, and each export (COGs,
quicklook PNGs).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pystac
from odc.geo.geobox import GeoBox
from pystac.extensions.classification import Classification, ClassificationExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.xarray_assets import XarrayAssetsExtension

from pipeline import layout
from pipeline.completion import completion_info, open_mosaic
from pipeline.legend import LegendEntry, legend_from_attrs
from pipeline.mosaic_inputs import geobox_of

logger = logging.getLogger(__name__)

ZARR_MEDIA_TYPE = "application/vnd+zarr"


def _input_item_ids(input_items: Sequence[Any]) -> list[str]:
    ids = []
    for item in input_items:
        if isinstance(item, pystac.Item):
            ids.append(item.id)
        elif isinstance(item, Mapping):
            ids.append(str(item["id"]))
        else:
            ids.append(str(item))
    return sorted(set(ids))


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _classes(legend: tuple[LegendEntry, ...], nodata: int) -> list[Classification]:
    classes = [
        Classification.create(value=entry.id, name=entry.name.replace(" ", "_"), description=entry.name, color_hint=entry.color.lstrip("#").upper())
        for entry in legend
    ]
    classes.append(Classification.create(value=nodata, name="nodata", description="no clear observation", nodata=True))
    return classes


def _add_projection(target: pystac.Item | pystac.Asset, geobox: GeoBox) -> None:
    projection = ProjectionExtension.ext(target, add_if_missing=isinstance(target, pystac.Item))
    epsg = geobox.crs.epsg
    if epsg is not None:
        projection.code = f"EPSG:{epsg}"
    else:
        projection.wkt2 = geobox.crs.to_wkt()
    projection.shape = [int(geobox.shape.y), int(geobox.shape.x)]
    projection.transform = list(geobox.affine)[:6]
    projection.bbox = list(geobox.extent.boundingbox)


def write_output_item(
    mosaic_url: str,
    item_path: str | Path,
    *,
    input_items: Sequence[Any],
    exports: Mapping[str, str | Path],
    item_id: str | None = None,
) -> pystac.Item:
    """Write a STAC Item describing a finished mosaic store and its exports.

    Parameters
    ----------
    mosaic_url
        A complete mosaic store.
    item_path
        Local path of the Item JSON, usually beside the store. Local asset
        hrefs are written relative to it.
    input_items
        The input STAC items: ids, :class:`pystac.Item` objects (linked as
        ``derived_from`` where they have a self link) or Item dicts.
    exports
        Export name -> file, as returned by
        :func:`pipeline.exports.export_cogs` and
        :func:`pipeline.exports.write_quicklooks`.
    item_id
        Item id. By default it is the job name from the store's provenance
        (else the name of the folder that contains the store) followed by
        ``-mosaic``.

    Returns
    -------
    pystac.Item
        The Item as written.

    Raises
    ------
    pipeline.completion.IncompleteStoreError
        If the mosaic store is not complete.
    """
    record = completion_info(mosaic_url)
    dataset = open_mosaic(mosaic_url)
    geobox = geobox_of(dataset, mosaic_url)
    attrs = dataset.attrs
    landcover_attrs = dataset[layout.LANDCOVER_VAR].attrs
    legend = legend_from_attrs(landcover_attrs)
    classes = _classes(legend, int(landcover_attrs.get("nodata", layout.LANDCOVER_NODATA)))

    if item_id is None:
        job_name = attrs.get("provenance", {}).get("job", {}).get("name")
        item_id = f"{job_name or Path(str(mosaic_url).rstrip('/')).parent.name or 'fleximo'}-mosaic"
    footprint = geobox.extent.to_crs("EPSG:4326")
    item = pystac.Item(
        id=item_id,
        geometry=footprint.json,
        bbox=list(footprint.boundingbox),
        datetime=None,
        start_datetime=_parse_time(attrs["start_datetime"]),
        end_datetime=_parse_time(attrs["end_datetime"]),
        properties={
            "created": record.get("completed_at", datetime.now(UTC).isoformat(timespec="seconds")),
            "description": "Land-cover and cloud composite made with FlexiMo (fleximo-pipeline)",
            "fleximo:software_version": attrs.get("software_version"),
            "fleximo:compositing": attrs.get("compositing"),
            "fleximo:input_items": _input_item_ids(input_items),
            "fleximo:provenance": attrs.get("provenance", {}),
        },
    )
    _add_projection(item, geobox)
    ClassificationExtension.add_to(item)

    mosaic_href = str(Path(mosaic_url).resolve()) if "://" not in str(mosaic_url) else str(mosaic_url)
    store_asset = pystac.Asset(
        href=mosaic_href,
        media_type=ZARR_MEDIA_TYPE,
        roles=["data"],
        title="Mosaic store (Zarr v3) with every layer and the overview pyramid",
    )
    item.add_asset("zarr", store_asset)
    XarrayAssetsExtension.ext(store_asset, add_if_missing=True).open_kwargs = {
        "engine": "zarr",
        "decode_coords": "all",
        "consolidated": False,
    }
    for name, variable in dataset.data_vars.items():
        asset = pystac.Asset(
            href=f"{mosaic_href.rstrip('/')}/{name}",
            media_type=ZARR_MEDIA_TYPE,
            roles=["data"],
            title=str(variable.attrs.get("long_name", name)),
            extra_fields={"data_type": str(variable.dtype), **({"nodata": variable.attrs["nodata"]} if "nodata" in variable.attrs else {})},
        )
        item.add_asset(f"zarr_{name}", asset)
        if name == layout.LANDCOVER_VAR:
            ClassificationExtension.ext(asset).classes = classes

    for key, path in exports.items():
        path = Path(path)
        if path.suffix.lower() in (".tif", ".tiff"):
            asset = pystac.Asset(href=str(path.resolve()), media_type=pystac.MediaType.COG, roles=["data"], title=f"{path.stem} (COG)")
        elif path.suffix.lower() == ".png":
            asset = pystac.Asset(href=str(path.resolve()), media_type=pystac.MediaType.PNG, roles=["overview", "visual"], title=f"{path.stem} (PNG)")
        else:
            asset = pystac.Asset(href=str(path.resolve()), roles=["data"])
        item.add_asset(key, asset)
        if key.startswith(layout.LANDCOVER_VAR) and path.suffix.lower() in (".tif", ".tiff"):
            ClassificationExtension.ext(asset).classes = classes

    for input_item in input_items:
        if isinstance(input_item, pystac.Item) and input_item.get_self_href():
            item.add_link(pystac.Link("derived_from", input_item.get_self_href(), media_type=pystac.MediaType.GEOJSON))

    item_path = Path(item_path)
    item_path.parent.mkdir(parents=True, exist_ok=True)
    item.set_self_href(str(item_path.resolve()))
    item.make_asset_hrefs_relative()
    item.save_object(include_self_link=False, dest_href=str(item_path))
    logger.info("wrote STAC Item %s for %s", item_path, mosaic_url)
    return item
