"""Mosaic stage: per-observation predictions -> regional composite store.

:func:`build_mosaic` reads the prediction stores of one job (all on the job
grid), composites them block by block with dask (:mod:`pipeline.compositing`
holds the rules), and writes one Zarr v3 store::

    mosaic.zarr/                   root group = full resolution
        landcover                  uint8 class id, nodata 255
        landcover_confidence       uint8 0-100, nodata 255
        cloud_probability          uint8 0-100, nodata 255
        clear_observations         uint16 count
        valid_observations         uint16 count
        1/, 2/, ...                overviews reduced by 2, 4, ... (:mod:`pipeline.overviews`)

Root attributes: ``provenance`` (as given by the caller), ``software_version``,
``compositing``, ``start_datetime``/``end_datetime``, ``input_item_ids``,
``input_observations``, ``class_pixel_counts`` (value -> pixels at full
resolution), the ``multiscales`` layout, and ``fleximo_completion``, which
is written last (:mod:`pipeline.completion`).

Nodata is the Zarr ``fill_value`` of each array (so unwritten chunks read as
nodata) and the ``nodata`` attribute (rioxarray's ``.rio.nodata``). There is
deliberately no ``_FillValue`` attribute, because xarray would then turn the
uint8 classes into floats with NaN. This way class 0 reads back as 0.

NOTE: GDAL 3.10, bundled in the rasterio 1.4.4 wheel, rejects these stores
("Unsupported codec: bytes"). GDAL added the Zarr v3 ``bytes`` and ``zstd``
codecs in pull request 11787 (merged February 2025, so expected in 3.11),
but not sharding. No newer GDAL was tried here. The COG exports of
:mod:`pipeline.exports` are the path for GDAL tools such as QGIS.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr
import zarr.codecs
from odc.geo.geobox import GeoBox
from odc.geo.xr import xr_coords

from pipeline import layout
from pipeline.completion import clear_complete, mark_complete, open_mosaic
from pipeline.compositing import (
    COMPOSITE_METHODS,
    STACK_LAYERS,
    CompositeMethod,
    composite_stack,
    composite_stack_without_probabilities,
)
from pipeline.legend import LegendEntry, legend_attrs, normalize_legend
from pipeline.mosaic_inputs import PredictionInputs, open_predictions
from pipeline.mosaic_summary import class_histogram, describe_mosaic
from pipeline.overviews import downsample_level, multiscales_attrs, overview_shapes
from pipeline.stores import is_remote, storage_options_from_env, zarr_store

if TYPE_CHECKING:
    import distributed

__all__ = ["MosaicOptions", "build_mosaic", "class_histogram", "describe_mosaic", "open_mosaic"]

logger = logging.getLogger(__name__)

_LAYER_DTYPES = {
    layout.LANDCOVER_VAR: np.uint8,
    layout.LANDCOVER_CONFIDENCE_VAR: np.uint8,
    layout.CLOUD_PROBABILITY_VAR: np.uint8,
    layout.CLEAR_OBSERVATIONS_VAR: np.uint16,
    layout.VALID_OBSERVATIONS_VAR: np.uint16,
}
_LAYER_NODATA = {
    layout.LANDCOVER_VAR: layout.LANDCOVER_NODATA,
    layout.LANDCOVER_CONFIDENCE_VAR: layout.PROBABILITY_FILL,
    layout.CLOUD_PROBABILITY_VAR: layout.PROBABILITY_FILL,
}
_LAYER_DESCRIPTIONS = {
    layout.LANDCOVER_VAR: ("land cover class", "1"),
    layout.LANDCOVER_CONFIDENCE_VAR: ("probability of the land cover class", "percent"),
    layout.CLOUD_PROBABILITY_VAR: ("cloud probability of the composite", "percent"),
    layout.CLEAR_OBSERVATIONS_VAR: ("number of clear-sky observations", "1"),
    layout.VALID_OBSERVATIONS_VAR: ("number of observations, clear or cloudy", "1"),
}


@dataclasses.dataclass(frozen=True)
class MosaicOptions:
    """Compositing and storage options of :func:`build_mosaic`.

    Attributes
    ----------
    method
        ``"clear-weighted"``: average the class probabilities of the clear
        observations, weighted by their clear-sky probability.
        ``"least-cloudy"``: take the least cloudy clear observation.
    cloud_threshold_pct
        An observation is clear where its cloud probability is below this
        value, in percent (0, 100].
    chunk_px
        Side of the stored chunks in pixels (the unit analysis reads).
    shard_above_chunks
        Shard the arrays when one layer would have more chunks than this;
        each shard then contains ``shard_factor x shard_factor`` chunks.
    shard_factor
        Chunks per shard side when sharding.
    zstd_level
        Zstandard compression level of every array.
    overview_min_px
        Overviews halve the grid until both sides are at most this many pixels.
    """

    method: CompositeMethod = "clear-weighted"
    cloud_threshold_pct: float = 50.0
    chunk_px: int = 512
    shard_above_chunks: int = 1024
    shard_factor: int = 4
    zstd_level: int = 3
    overview_min_px: int = 256

    def __post_init__(self) -> None:
        if self.method not in COMPOSITE_METHODS:
            raise ValueError(f"method is {self.method!r}; expected one of {COMPOSITE_METHODS}")
        if not 0 < self.cloud_threshold_pct <= 100:
            raise ValueError(
                f"cloud_threshold_pct is {self.cloud_threshold_pct}; expected a percentage in (0, 100]"
            )
        if self.chunk_px < 16 or self.chunk_px % 2:
            raise ValueError(f"chunk_px is {self.chunk_px}; expected an even number of pixels >= 16")
        for name in ("shard_above_chunks", "shard_factor", "overview_min_px"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} is {getattr(self, name)}; expected a positive integer")
        if not 1 <= self.zstd_level <= 22:
            raise ValueError(f"zstd_level is {self.zstd_level}; expected 1-22")

    def shard_px(self, shape: tuple[int, int]) -> int | None:
        """Return the shard side in pixels for a grid of ``shape``, or ``None`` for no sharding."""
        n_chunks = -(-shape[0] // self.chunk_px) * -(-shape[1] // self.chunk_px)
        if n_chunks <= self.shard_above_chunks:
            return None
        return self.chunk_px * self.shard_factor


def _software_version() -> str:
    try:
        return importlib.metadata.version("fleximo-pipeline")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _composite_dataset(
    inputs: PredictionInputs, legend: Sequence[LegendEntry], options: MosaicOptions, write_px: int
) -> xr.Dataset:
    """Build the lazy composite layers on the job grid."""
    landcover = da.stack([data.rechunk((write_px, write_px)) for data in inputs.landcover])
    confidence = da.stack([data.rechunk((write_px, write_px)) for data in inputs.confidence])
    cloud = da.stack([data.rechunk((write_px, write_px)) for data in inputs.cloud])
    if inputs.probabilities:
        probabilities = da.stack([data.rechunk((-1, write_px, write_px)) for data in inputs.probabilities])
        function, arguments = composite_stack, (probabilities.rechunk({0: -1, 1: -1}), "ncyx")
    else:
        function, arguments = composite_stack_without_probabilities, ()

    stacked = da.blockwise(
        function,
        "lyx",
        *arguments,
        landcover.rechunk({0: -1}),
        "nyx",
        confidence.rechunk({0: -1}),
        "nyx",
        cloud.rechunk({0: -1}),
        "nyx",
        new_axes={"l": len(STACK_LAYERS)},
        concatenate=True,
        dtype=np.uint16,
        class_ids=tuple(inputs.class_ids),
        method=options.method,
        cloud_threshold_pct=float(options.cloud_threshold_pct),
    )

    layers = {}
    for index, name in enumerate(STACK_LAYERS):
        long_name, units = _LAYER_DESCRIPTIONS[name]
        attrs: dict[str, Any] = {"long_name": long_name, "units": units, "grid_mapping": "spatial_ref"}
        if name in _LAYER_NODATA:
            attrs["nodata"] = _LAYER_NODATA[name]
        if name == layout.LANDCOVER_VAR:
            attrs.update(legend_attrs(legend))
        layers[name] = xr.DataArray(stacked[index].astype(_LAYER_DTYPES[name]), dims=("y", "x"), attrs=attrs)
    return xr.Dataset(layers)


def _grid_coords(geobox: GeoBox) -> dict[str, xr.DataArray]:
    coords = xr_coords(geobox, crs_coord_name="spatial_ref")
    return {name: coords[name] for name in ("y", "x", "spatial_ref")}


def _encoding(dataset: xr.Dataset, options: MosaicOptions, shard_px: int | None) -> dict[str, dict[str, Any]]:
    encoding = {}
    for name, variable in dataset.data_vars.items():
        chunk = (min(options.chunk_px, variable.shape[0]), min(options.chunk_px, variable.shape[1]))
        entry: dict[str, Any] = {
            "chunks": chunk,
            "compressors": (zarr.codecs.ZstdCodec(level=options.zstd_level),),
            "fill_value": int(variable.attrs.get("nodata", 0)),
        }
        if shard_px is not None:
            entry["shards"] = (shard_px, shard_px)
        encoding[name] = entry
    return encoding


def _compute(graph: Any, client: distributed.Client | None) -> Any:
    if client is None:
        return dask.compute(graph)[0]
    return client.compute(graph).result()


def _write_level(
    dataset: xr.Dataset,
    url: str,
    group: str | None,
    options: MosaicOptions,
    shard_px: int | None,
    client: distributed.Client | None,
) -> None:
    for variable in dataset.variables.values():
        variable.encoding = {}
    remote_options = {"storage_options": storage_options_from_env(url)} if is_remote(url) else {}
    delayed = dataset.to_zarr(
        url,
        group=group,
        mode="w",
        zarr_format=3,
        consolidated=False,
        compute=False,
        encoding=_encoding(dataset, options, shard_px),
        **remote_options,
    )
    _compute(delayed, client)


def _write_overviews(
    mosaic_url: str, geobox: GeoBox, options: MosaicOptions, client: distributed.Client | None
) -> tuple[list[GeoBox], dict[str, str]]:
    """Write overview levels 1, 2, ... each from the level before; return all grids and the resampling per layer."""
    geoboxes = [geobox]
    methods: dict[str, str] = {}
    for level, _ in enumerate(overview_shapes((geobox.shape.y, geobox.shape.x), options.overview_min_px), start=1):
        source = xr.open_zarr(
            zarr_store(mosaic_url, "r"),
            group=None if level == 1 else str(level - 1),
            chunks={},
            zarr_format=3,
            consolidated=False,
        )
        reduced, level_geobox, methods = downsample_level(source, geoboxes[-1], options.chunk_px)
        shard_px = options.shard_px((level_geobox.shape.y, level_geobox.shape.x))
        if shard_px is not None:
            reduced = reduced.chunk({"y": shard_px, "x": shard_px})
        reduced = reduced.assign_coords(_grid_coords(level_geobox))
        _write_level(reduced, mosaic_url, str(level), options, shard_px, client)
        geoboxes.append(level_geobox)
        logger.info("wrote overview level %d (%dx%d)", level, level_geobox.shape.y, level_geobox.shape.x)
    return geoboxes, methods


def build_mosaic(
    prediction_urls: Sequence[str],
    mosaic_url: str,
    *,
    legend: Sequence[Any],
    provenance: Mapping[str, Any],
    options: MosaicOptions = MosaicOptions(),
    client: distributed.Client | None = None,
) -> str:
    """Composite per-observation predictions into a regional mosaic store.

    Parameters
    ----------
    prediction_urls
        Prediction stores (``<root>/predictions/<observation_id>.zarr``), all
        on the same job grid. Their order does not matter: observations are
        ordered by acquisition time, then observation id.
    mosaic_url
        Where to write the mosaic store; an existing store there is replaced.
    legend
        Land-cover classes as ``(id, name, color)`` records (see
        :func:`pipeline.legend.normalize_legend`); one per probability plane.
    provenance
        JSON-serialisable job facts stored as the ``provenance`` attribute
        (model checkpoint hash and card, job spec, ...).
    options
        Compositing and storage options.
    client
        A ``distributed.Client`` to compute on; ``None`` uses the current
        dask scheduler.

    Returns
    -------
    str
        ``mosaic_url``, once the store is complete.

    Raises
    ------
    ValueError
        If no prediction store is given, the stores are on different grids,
        the legend does not match their class planes, or the method is
        ``"clear-weighted"`` and a store has no class probabilities.
    """
    entries = normalize_legend(legend)
    inputs = open_predictions(
        prediction_urls, legend_ids=[entry.id for entry in entries], probabilities=options.method == "clear-weighted"
    )
    geobox = inputs.geobox
    shard_px = options.shard_px((geobox.shape.y, geobox.shape.x))
    write_px = shard_px or options.chunk_px
    logger.info(
        "compositing %d observations on a %dx%d grid into %s (method %s, chunks %d px, shards %s)",
        len(inputs.observations), geobox.shape.y, geobox.shape.x, mosaic_url,
        options.method, options.chunk_px, shard_px or "none",
    )

    clear_complete(mosaic_url)
    composite = _composite_dataset(inputs, entries, options, write_px)
    composite = composite.assign_coords(inputs.coords)
    _write_level(composite, mosaic_url, None, options, shard_px, client)

    # Counting the stored classes rereads one uint8 layer. A histogram in the
    # same dask.compute call as the write ran every composite task twice
    # (dask 2026.7.1), because the store graph is optimised on its own.
    stored = xr.open_zarr(zarr_store(mosaic_url, "r"), chunks={}, zarr_format=3, consolidated=False)
    counts = _compute(class_histogram(stored[layout.LANDCOVER_VAR].data), client)

    geoboxes, methods = _write_overviews(mosaic_url, geobox, options, client)

    start, end = inputs.datetime_range
    root = zarr.open_group(zarr_store(mosaic_url, "r+"), mode="r+", zarr_format=3)
    root.attrs.update(
        _json_safe(
            {
                "title": "FlexiMo land-cover mosaic",
                "Conventions": "CF-1.10",
                "software": "fleximo-pipeline",
                "software_version": _software_version(),
                "compositing": {"method": options.method, "cloud_threshold_pct": options.cloud_threshold_pct},
                "start_datetime": start,
                "end_datetime": end,
                "input_item_ids": inputs.item_ids,
                "input_observations": inputs.observations,
                "class_pixel_counts": {str(value): int(counts[value]) for value in np.flatnonzero(counts)},
                "provenance": dict(provenance),
                **multiscales_attrs(geoboxes, methods),
            }
        )
    )

    mark_complete(
        mosaic_url,
        {
            "layers": list(STACK_LAYERS),
            "shape": [int(geobox.shape.y), int(geobox.shape.x)],
            "overview_levels": len(geoboxes) - 1,
            "software_version": _software_version(),
        },
    )
    return mosaic_url
