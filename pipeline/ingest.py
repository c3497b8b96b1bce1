"""Scenes -> lazy dask cube on the job grid -> Zarr v3 input cube.

One observation is the set of scenes of one sensor and collection taken in
one satellite pass (tiles of the same orbit). :func:`load_observation` merges
them first-valid-wins onto the job grid, one dask task per block.

Why not ``odc.stac.load``: the pipeline's scenes are
:class:`~catalog.scene.SceneDescription` records rather than pystac Items.
odc-stac 0.5.3 neither places RPC-only (Gaofen Level-1A) assets nor applies
scale and offset, and with ``fail_on_error=False`` it turns failed reads into
nodata. Each block task here warps its assets with rasterio, retries
transient failures and raises on the rest, and only small frozen records
travel in the graph.

Storage dtype: reflectance is int16 of reflectance x 10000 (fill -32768).
That is a quarter of float64 and half of float32 in memory and bytes, and
exact for Sentinel-2, whose stored step is 1e-4 reflectance.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize
from odc.geo.geobox import GeoBox

from catalog.scene import BandInfo, SceneDescription
from pipeline import layout
from pipeline.completion import mark_complete
from pipeline.grid import footprint_in_crs
from pipeline.observations import SAME_PASS_GAP, group_observations, observation_id_of
from pipeline.reading import ResamplingName, RetryPolicy, SkippedScene, check_scenes, read_band
from pipeline.stores import prepare_encoding, set_grid_metadata, storage_options_from_env, zarr_store

if TYPE_CHECKING:
    import distributed

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class _BlockRequest:
    """Inputs of one block task: small, frozen, and tokenized the same on every worker."""

    bands: tuple[str, ...]
    scenes: tuple[SceneDescription, ...]
    # (left, bottom, right, top) of each scene's footprint in the grid CRS,
    # widened by a margin for the resampling kernel, to skip scenes a block misses.
    scene_bounds: tuple[tuple[float, float, float, float], ...]
    geobox: GeoBox
    resampling: ResamplingName
    retry: RetryPolicy

    def scenes_overlapping(self, block: GeoBox) -> list[SceneDescription]:
        """Scenes whose footprint bounds overlap ``block``, in merge order."""
        left, bottom, right, top = block.extent.boundingbox.bbox
        return [
            scene
            for scene, (scene_left, scene_bottom, scene_right, scene_top) in zip(self.scenes, self.scene_bounds, strict=True)
            if scene_left < right and left < scene_right and scene_bottom < top and bottom < scene_top
        ]

    def __dask_tokenize__(self) -> Any:
        return (
            self.bands,
            tuple((scene.item_id, tuple(dataclasses.astuple(band) for band in scene.bands)) for scene in self.scenes),
            self.scene_bounds,
            self.geobox.crs.to_wkt(),
            tuple(self.geobox.affine[:6]),
            tuple(self.geobox.shape.yx),
            self.resampling,
            self.retry,
        )


def encode_reflectance(reflectance: np.ndarray) -> np.ndarray:
    """Encode float reflectance as layout int16 (x 10000), with NaN as the fill value.

    Values beyond the int16 range (reflectance above 3.2767, such as
    saturated DN 65535 of L1C) are clipped to the largest valid value, never
    to the fill value.
    """
    scaled = np.rint(np.asarray(reflectance, dtype=np.float64) / layout.REFLECTANCE_SCALE)
    encoded = np.clip(np.nan_to_num(scaled, nan=layout.REFLECTANCE_FILL), -32767, 32767).astype(np.int16)
    encoded[np.isnan(scaled)] = layout.REFLECTANCE_FILL
    return encoded


def decode_reflectance(reflectance: xr.DataArray) -> xr.DataArray:
    """Decode layout int16 reflectance to float32 reflectance, NaN where nodata."""
    stored = reflectance.astype(np.float32)
    decoded = stored.where(reflectance != layout.REFLECTANCE_FILL) * np.float32(layout.REFLECTANCE_SCALE)
    decoded.attrs = {key: value for key, value in reflectance.attrs.items() if key not in ("_FillValue", "scale_factor", "add_offset")}
    return decoded


def _read_reflectance_block(request: _BlockRequest, block_info: dict | None = None) -> np.ndarray:
    block = _block_geobox(request.geobox, block_info)
    out = np.full((len(request.bands), *block.shape.yx), layout.REFLECTANCE_FILL, dtype=np.int16)
    for index, name in enumerate(request.bands):
        filled = np.zeros(block.shape.yx, dtype=bool)
        for scene in request.scenes_overlapping(block):
            band = scene.band(name)
            stored = read_band(
                band,
                block,
                resampling=request.resampling,
                retry=request.retry,
                sidecars=not scene.map_projected,
                overviews=True,
            )
            take = ~np.isnan(stored)
            take &= ~filled
            if take.any():
                _encode_in_place(stored, band)
                np.copyto(out[index], stored, casting="unsafe", where=take)
                filled |= take
            if filled.all():
                break
    return out


def _encode_in_place(stored: np.ndarray, band: BandInfo) -> None:
    """Turn float32 stored values into layout integers in place, without a float64 copy.

    float32 is exact enough: ``DN * scale / 1e-4`` stays within 0.005 of the
    true value for reflectance up to 3.3, far from the 0.5 rounding boundary
    for values that are whole multiples of 1e-4.
    """
    np.nan_to_num(stored, copy=False, nan=0.0)
    stored *= np.float32(band.scale / layout.REFLECTANCE_SCALE)
    stored += np.float32(band.offset / layout.REFLECTANCE_SCALE)
    np.rint(stored, out=stored)
    np.clip(stored, -32767, 32767, out=stored)


def _read_classification_block(request: _BlockRequest, block_info: dict | None = None) -> np.ndarray:
    block = _block_geobox(request.geobox, block_info)
    (name,) = request.bands
    out = np.full(block.shape.yx, layout.CLASSIFICATION_FILL, dtype=np.uint8)
    filled = np.zeros(block.shape.yx, dtype=bool)
    for scene in request.scenes_overlapping(block):
        band = scene.band(name)
        stored = read_band(band, block, resampling=request.resampling, retry=request.retry, sidecars=not scene.map_projected)
        take = ~np.isnan(stored) & ~filled
        if take.any():
            values = stored[take]
            if values.min() < 0 or values.max() >= layout.CLASSIFICATION_FILL:
                raise ValueError(
                    f"band {name} of {band.href} contains class values outside 0..254 "
                    f"(min {values.min()}, max {values.max()}); categorical bands are stored as uint8 "
                    f"with {layout.CLASSIFICATION_FILL} as nodata"
                )
            out[take] = values.astype(np.uint8)
            filled |= take
        if filled.all():
            break
    return out


def _block_geobox(geobox: GeoBox, block_info: dict | None) -> GeoBox:
    if block_info is None:
        return geobox
    (y0, y1), (x0, x1) = block_info[None]["array-location"][-2:]
    return geobox[y0:y1, x0:x1]


def _resolve_bands(scenes: Sequence[SceneDescription], bands: Sequence[str] | None) -> tuple[list[BandInfo], list[BandInfo]]:
    first = scenes[0]
    if bands is None:
        selected = [band for band in first.bands if band.role in ("reflectance", "classification")]
    else:
        selected = [first.band(name) for name in bands]
    quality = [band.name for band in selected if band.role not in ("reflectance", "classification")]
    if quality:
        raise ValueError(
            f"bands {quality} have role 'quality', which the input cube does not store; "
            "request reflectance or classification bands only"
        )
    for scene in scenes[1:]:
        for band in selected:
            other = scene.band(band.name)
            if other.role != band.role or (band.wavelength_um is not None and other.wavelength_um is not None and abs(other.wavelength_um - band.wavelength_um) > 0.005):
                raise ValueError(
                    f"band {band.name} differs between scenes {first.item_id} and {scene.item_id} "
                    f"(role {band.role}/{other.role}, wavelength {band.wavelength_um}/{other.wavelength_um} µm); "
                    "one observation must have one band set"
                )
    reflectance = [band for band in selected if band.role == "reflectance"]
    classification = [band for band in selected if band.role == "classification"]
    if not reflectance:
        raise ValueError(f"no reflectance bands selected from {[band.name for band in first.bands]}; the model needs at least one")
    return reflectance, classification


def _validate_observation(scenes: Sequence[SceneDescription]) -> None:
    if not scenes:
        raise ValueError("load_observation needs at least one scene")
    sensors = {(scene.platform, scene.instrument, scene.collection) for scene in scenes}
    if len(sensors) > 1:
        raise ValueError(
            f"scenes of one observation must share platform, instrument and collection, got {sorted(sensors)}; "
            "split them with group_observations"
        )


def load_observation(
    scenes: Sequence[SceneDescription],
    geobox: GeoBox,
    *,
    bands: Sequence[str] | None = None,
    chunk_px: int = 1024,
    resampling: ResamplingName = "bilinear",
    retry: RetryPolicy = RetryPolicy(),
) -> xr.Dataset:
    """Load the scenes of one observation onto ``geobox``, lazily.

    Parameters
    ----------
    scenes
        Scenes of one pass (one value of :func:`group_observations`). Where
        they overlap, the first scene with a valid pixel wins.
    geobox
        Job grid from :func:`pipeline.grid.plan_grid`.
    bands
        Band names to load. ``None`` loads every reflectance and
        classification band of the first scene.
    chunk_px
        Block size in pixels along y and x. One dask task reads one block.
    resampling
        Kernel for reflectance bands (``"bilinear"``, ``"cubic"``, ...).
        On a grid at least twice as coarse as an asset, reflectance is warped
        from the asset's coarsest overview that is still as fine as the grid.
        Classification bands always use nearest when upsampling and mode
        when downsampling, from full resolution, so their values stay valid
        classes.
    retry
        Retry policy for transient read failures.

    Returns
    -------
    xarray.Dataset
        ``reflectance`` int16 ``(band, y, x)`` = round(reflectance x 10000),
        fill -32768, chunked ``(n_bands, chunk_px, chunk_px)``, with
        coordinates ``band``, ``wavelength_um``, ``native_gsd_m`` and
        ``spatial_ref``; one uint8 ``(y, x)`` variable per classification band
        (fill 255); attrs ``observation_id``, ``item_ids``, ``platform``,
        ``instrument``, ``datetime`` (ISO 8601 UTC) and ``gsd_m``.
    """
    _validate_observation(scenes)
    if chunk_px <= 0:
        raise ValueError(f"chunk_px must be a positive number of pixels, got {chunk_px}")
    reflectance_bands, classification_bands = _resolve_bands(scenes, bands)
    ordered = tuple(sorted(scenes, key=lambda scene: (scene.datetime_utc, scene.item_id)))
    chunks = (_axis_chunks(geobox.height, chunk_px), _axis_chunks(geobox.width, chunk_px))
    bounds = _scene_bounds(ordered, geobox)

    request = _BlockRequest(tuple(band.name for band in reflectance_bands), ordered, bounds, geobox, resampling, retry)
    reflectance = da.map_blocks(
        _read_reflectance_block,
        request,
        name=f"load-reflectance-{tokenize(request, chunk_px)}",
        chunks=((len(reflectance_bands),), *chunks),
        dtype=np.int16,
        meta=np.empty((0, 0, 0), dtype=np.int16),
    )
    variables: dict[str, xr.DataArray] = {
        layout.REFLECTANCE_VAR: xr.DataArray(
            reflectance,
            dims=("band", "y", "x"),
            attrs={"scale_factor": layout.REFLECTANCE_SCALE, "add_offset": 0.0, "_FillValue": layout.REFLECTANCE_FILL, "units": "1"},
        )
    }

    for band in classification_bands:
        kernel: ResamplingName = "nearest" if abs(geobox.resolution.x) <= band.gsd_m else "mode"
        class_request = _BlockRequest((band.name,), ordered, bounds, geobox, kernel, retry)
        variables[band.name] = xr.DataArray(
            da.map_blocks(
                _read_classification_block,
                class_request,
                name=f"load-{band.name.lower()}-{tokenize(class_request, chunk_px)}",
                chunks=chunks,
                dtype=np.uint8,
                meta=np.empty((0, 0), dtype=np.uint8),
            ),
            dims=("y", "x"),
            attrs={"_FillValue": layout.CLASSIFICATION_FILL, "long_name": f"{band.name} classes"},
        )

    ds = xr.Dataset(
        variables,
        coords={
            "band": np.array([band.name for band in reflectance_bands], dtype=object),
            layout.WAVELENGTH_COORD: ("band", np.array([band.wavelength_um for band in reflectance_bands], dtype=np.float64)),
            "native_gsd_m": ("band", np.array([band.gsd_m for band in reflectance_bands], dtype=np.float64)),
        },
        attrs={
            "observation_id": observation_id_of(ordered),
            "item_ids": [scene.item_id for scene in ordered],
            "platform": ordered[0].platform,
            "instrument": ordered[0].instrument,
            "collection": ordered[0].collection,
            "datetime": ordered[0].datetime_utc.isoformat().replace("+00:00", "Z"),
            "gsd_m": min(band.gsd_m for band in reflectance_bands),
        },
    )
    return set_grid_metadata(ds, geobox)


def _scene_bounds(scenes: Sequence[SceneDescription], geobox: GeoBox) -> tuple[tuple[float, float, float, float], ...]:
    bounds = []
    for scene in scenes:
        # The margin covers the widest kernel (cubic reaches 2 source pixels)
        # at the scene's coarsest band and footprints drawn slightly inside the
        # data. Level-1A footprints come from corner coordinates in the product
        # metadata rather than from the RPCs, so they get 1 km more.
        margin = 4 * max(band.gsd_m for band in scene.bands) + 2 * abs(geobox.resolution.x)
        if not scene.map_projected:
            margin += 1000.0
        left, bottom, right, top = footprint_in_crs(scene, geobox.crs).boundingbox.bbox
        bounds.append((left - margin, bottom - margin, right + margin, top + margin))
    return tuple(bounds)


def _axis_chunks(size: int, chunk_px: int) -> tuple[int, ...]:
    full, rest = divmod(size, chunk_px)
    return (chunk_px,) * full + ((rest,) if rest else ())


def write_input_cube(
    ds: xr.Dataset,
    url: str,
    *,
    client: distributed.Client | None = None,
    storage_options: dict | None = None,
) -> str:
    """Write an observation cube from :func:`load_observation` to a Zarr v3 store.

    The store's metadata and coordinates are written from the calling
    process. Dask computes and writes the data chunks, on the workers of
    ``client`` when one is given. Each worker then writes the blocks it loads,
    so nothing large passes through the scheduler.

    Parameters
    ----------
    ds
        Dataset in the input-cube layout.
    url
        Target store, usually ``join_url(root, layout.INPUTS_DIR, f"{observation_id}.zarr")``;
        an existing store there is replaced.
    client
        ``distributed.Client`` to compute on. ``None`` uses dask's current scheduler.
    storage_options
        fsspec options for object storage, by default from the environment.

    Returns
    -------
    str
        ``url``. The store carries a completion record
        (:func:`pipeline.completion.is_complete`) once all chunks are written.
    """
    if layout.REFLECTANCE_VAR not in ds:
        raise ValueError(f"dataset has no {layout.REFLECTANCE_VAR!r} variable; build it with load_observation")
    if ds[layout.REFLECTANCE_VAR].dtype != layout.REFLECTANCE_DTYPE:
        raise ValueError(
            f"{layout.REFLECTANCE_VAR!r} is {ds[layout.REFLECTANCE_VAR].dtype}, but the input cube stores "
            f"{layout.REFLECTANCE_DTYPE} reflectance x 10000; pass the dataset from load_observation, or one "
            "opened with pipeline.stores.open_dataset (mask_and_scale=False)"
        )
    prepared = prepare_encoding(ds)
    store = zarr_store(url, "w", storage_options=storage_options)
    delayed = prepared.to_zarr(store, mode="w", zarr_format=3, consolidated=False, compute=False)
    if client is not None:
        client.compute(delayed).result()
    else:
        delayed.compute()
    # to_zarr with mode "w" replaced any earlier record, so a cube left by a
    # failed write reads as incomplete.
    options = storage_options_from_env(url) if storage_options is None else storage_options
    mark_complete(url, {"stage": "ingest", "observation_id": ds.attrs.get("observation_id")}, options)
    logger.info("wrote input cube %s (%s)", url, ds.attrs.get("observation_id"))
    return url


__all__ = [
    "SAME_PASS_GAP",
    "SkippedScene",
    "check_scenes",
    "decode_reflectance",
    "encode_reflectance",
    "group_observations",
    "load_observation",
    "observation_id_of",
    "write_input_cube",
]
