"""Zarr v3 stores on local disk or object storage, with the grid kept in them.

Every store the pipeline writes is a Zarr v3 group whose raster variables
have ``y``/``x`` dimensions and a ``spatial_ref`` coordinate carrying
``crs_wkt`` and ``GeoTransform``, so ``xr.open_zarr(url,
decode_coords="all")``, rioxarray and GDAL read the grid back.

Stages create a store once (metadata and coordinates only), then dask
workers write chunk-aligned regions into it. Region writes go through
zarr directly, never through xarray's CF encoding, so the stored values are
exactly the values given and a retried task rewrites the same bytes.

Credentials for object storage come from the standard environment
(``AWS_ACCESS_KEY_ID``, profiles, instance roles and so on). The filesystem
libraries read them, and this module never reads, stores or logs them.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
from collections.abc import Mapping
from typing import Any, Literal

import dask.array as da
import numpy as np
import xarray as xr
import zarr
import zarr.codecs
import zarr.storage
from affine import Affine
from odc.geo.crs import CRS
from odc.geo.geobox import GeoBox
from odc.geo.xr import xr_coords

logger = logging.getLogger(__name__)

SPATIAL_REF = "spatial_ref"
STAGE_CODEC = {"cname": "lz4", "clevel": 5, "shuffle": "bitshuffle"}
"""Blosc settings of the stores stages exchange (input cubes, predictions).

On int16 reflectance, bit-shuffled LZ4 is both smaller and faster than
Zstandard: on a Sentinel-2 cube it stores 13 % fewer bytes than zstd level 1
and decodes about twice as fast. On uint8 probabilities it encodes 2.5 times
as fast and stores up to 30 % more bytes. Predictions are an intermediate, so
speed wins there. The mosaic, a product, has its own Zstandard level.
"""
StoreMode = Literal["r", "r+", "a", "w", "w-"]


class ChunkAlignmentError(ValueError):
    """A region write whose edges do not fall on the store's chunk edges."""


def is_remote(url: str) -> bool:
    """Return whether ``url`` names object storage rather than a local path."""
    return "://" in url and not url.startswith("file://")


def local_path(url: str) -> str:
    """Return the file-system path of a local store URL (a plain path or ``file://``)."""
    return url.removeprefix("file://")


def join_url(root: str, *parts: str) -> str:
    """Join path parts onto a local folder or an object-store URL.

    ``join_url("s3://bucket/run", "inputs", "a.zarr")`` returns
    ``"s3://bucket/run/inputs/a.zarr"``. A local root is joined with the
    platform's separator.
    """
    cleaned = [part.strip("/") for part in parts if part.strip("/")]
    if is_remote(root):
        return posixpath.join(root.rstrip("/"), *cleaned)
    return os.path.join(root, *cleaned)


def storage_options_from_env(url: str) -> dict[str, Any]:
    """Build fsspec storage options for ``url`` from the standard environment.

    Only the endpoint and region are set here (``AWS_ENDPOINT_URL_S3``,
    ``AWS_ENDPOINT_URL``, or GDAL's ``AWS_S3_ENDPOINT`` with ``AWS_HTTPS``;
    ``AWS_REGION`` or ``AWS_DEFAULT_REGION``). Credentials are left to the
    provider chain of botocore on each worker, so no secret enters a Dask
    graph or a log line.

    Returns
    -------
    dict
        Options for ``fsspec``/``s3fs``, empty for local paths and for
        schemes whose libraries read their own environment (gs://, az://).
    """
    if not url.startswith(("s3://", "s3a://")):
        return {}

    options: dict[str, Any] = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint and os.environ.get("AWS_S3_ENDPOINT"):
        scheme = "http" if os.environ.get("AWS_HTTPS", "YES").upper() in ("NO", "FALSE", "0") else "https"
        endpoint = os.environ["AWS_S3_ENDPOINT"]
        if "://" not in endpoint:
            endpoint = f"{scheme}://{endpoint}"
    if endpoint:
        options["endpoint_url"] = endpoint

    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        options["client_kwargs"] = {"region_name": region}
    return options


def zarr_store(
    url: str, mode: StoreMode = "r", *, storage_options: dict[str, Any] | None = None
) -> zarr.storage.StoreLike:
    """Open the zarr store at ``url``: a local folder or any fsspec URL.

    ``storage_options`` default to :func:`storage_options_from_env`.
    """
    read_only = mode == "r"
    if not is_remote(url):
        path = local_path(url)
        if read_only and not os.path.exists(path):
            raise FileNotFoundError(f"no Zarr store at {path!r}; write it first or check the path")
        return zarr.storage.LocalStore(path, read_only=read_only)

    options = storage_options_from_env(url) if storage_options is None else storage_options
    return zarr.storage.FsspecStore.from_url(url, storage_options=options, read_only=read_only)


def open_v3_group(url: str, kind: str, fix: str, *, storage_options: dict[str, Any] | None = None) -> zarr.Group:
    """Open the Zarr v3 group at ``url`` read-only, with errors that name ``kind`` (e.g. "input cube") and ``fix``.

    Raises
    ------
    FileNotFoundError
        If there is nothing at ``url``.
    ValueError
        If ``url`` is a file, a Zarr array or a Zarr v2 store, or its
        metadata is not valid JSON.
    """
    if not is_remote(url) and os.path.isfile(local_path(url)):
        raise ValueError(f"{kind} {url!r} is a file, not a Zarr store; {fix}")
    try:
        group = zarr.open_group(zarr_store(url, "r", storage_options=storage_options), mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as error:
        raise FileNotFoundError(f"no {kind} at {url!r}; {fix}") from error
    except zarr.errors.ContainsArrayError as error:
        raise ValueError(f"{kind} {url!r} is a Zarr array, not a group; {fix}") from error
    except json.JSONDecodeError as error:
        raise ValueError(f"{kind} {url!r} has invalid Zarr metadata ({error}); {fix}") from error
    if group.metadata.zarr_format != 3:
        raise ValueError(
            f"{kind} {url!r} is a Zarr format {group.metadata.zarr_format} store, and the pipeline reads "
            f"Zarr v3; {fix}"
        )
    return group


def fsspec_mapper(url: str, *, storage_options: dict[str, Any] | None = None):
    """Return an fsspec key-value mapper for ``url``, for libraries that take one."""
    import fsspec

    options = storage_options_from_env(url) if storage_options is None else storage_options
    return fsspec.get_mapper(url, **options)


def open_dataset(
    url: str,
    *,
    storage_options: dict[str, Any] | None = None,
    mask_and_scale: bool = False,
) -> xr.Dataset:
    """Open a pipeline store lazily, with its CRS and grid restored.

    Parameters
    ----------
    url
        Local folder or object-store URL of a Zarr v3 store.
    storage_options
        fsspec options, by default from :func:`storage_options_from_env`.
    mask_and_scale
        ``False`` (default) returns the stored values and dtypes of the
        layout (for example int16 reflectance x 10000 with fill -32768);
        ``True`` applies CF decoding, which gives float values with NaN.

    Returns
    -------
    xarray.Dataset
        Dask-backed, chunked as stored, with a ``spatial_ref`` coordinate so
        that ``ds.rio.crs`` and ``ds.rio.transform()`` give the grid.
    """
    store = zarr_store(url, "r", storage_options=storage_options)
    ds = xr.open_zarr(
        store,
        zarr_format=3,
        consolidated=False,
        decode_coords="all",
        mask_and_scale=mask_and_scale,
    )
    # Small 1-D coordinates (band names, wavelengths, class names) are read
    # now, so that each access does not go back to the store. They are read
    # in this process, even where the caller has a client of a Dask cluster.
    small = [name for name, coordinate in ds.coords.items() if coordinate.ndim == 1 and coordinate.size <= 100_000]
    ds = ds.assign_coords({name: ds[name].compute(scheduler="synchronous") for name in small})
    if SPATIAL_REF in ds.coords and "crs_wkt" in ds[SPATIAL_REF].attrs:
        import rioxarray  # noqa: F401  (registers the .rio accessor)

        if ds.rio.crs is None:
            ds = ds.rio.write_crs(ds[SPATIAL_REF].attrs["crs_wkt"])
    return ds


def set_grid_metadata(ds: xr.Dataset, geobox: GeoBox) -> xr.Dataset:
    """Return ``ds`` with ``y``/``x`` pixel-centre coordinates and a ``spatial_ref`` for ``geobox``.

    Data variables with ``y`` and ``x`` dimensions get ``grid_mapping`` set,
    so CF readers link them to the CRS.
    """
    if ds.sizes.get("y", geobox.height) != geobox.height or ds.sizes.get("x", geobox.width) != geobox.width:
        raise ValueError(
            f"dataset is {ds.sizes.get('y')} x {ds.sizes.get('x')} px (y, x) but the grid is "
            f"{geobox.height} x {geobox.width}; load the data on this grid first"
        )
    coords = xr_coords(geobox, crs_coord_name=SPATIAL_REF)
    ds = ds.assign_coords(coords)
    for name, variable in ds.data_vars.items():
        if "y" in variable.dims and "x" in variable.dims:
            variable.attrs.pop("grid_mapping", None)
            ds[name].encoding["grid_mapping"] = SPATIAL_REF
    return ds


class MissingGridError(ValueError):
    """A dataset has no CRS in a ``spatial_ref`` coordinate, so its grid is unknown."""


def grid_of(ds: xr.Dataset | xr.DataArray) -> GeoBox:
    """Return the GeoBox of a dataset written by the pipeline (or any CF/rioxarray raster).

    The CRS comes from ``spatial_ref.crs_wkt`` and the transform from its
    ``GeoTransform`` when present, else from the pixel-centre coordinates.

    Raises
    ------
    MissingGridError
        If there is no CRS.
    ValueError
        If ``GeoTransform`` and the ``x``/``y`` coordinates disagree by more
        than 1/1000 pixel.
    """
    if SPATIAL_REF not in ds.coords or "crs_wkt" not in ds[SPATIAL_REF].attrs:
        raise MissingGridError(
            f"dataset has no {SPATIAL_REF!r} coordinate with 'crs_wkt'; write it with "
            "pipeline.stores.set_grid_metadata or open the store with decode_coords='all'"
        )
    crs = CRS(ds[SPATIAL_REF].attrs["crs_wkt"])
    height, width = ds.sizes["y"], ds.sizes["x"]

    from_coords = _transform_from_coords(ds)
    geotransform = ds[SPATIAL_REF].attrs.get("GeoTransform")
    if geotransform is None:
        if from_coords is None:
            raise ValueError("dataset has neither a GeoTransform nor 2 or more x/y coordinates")
        return GeoBox((height, width), from_coords, crs)

    c, a, b, f, d, e = (float(v) for v in str(geotransform).split())
    transform = Affine(a, b, c, d, e, f)
    if from_coords is not None:
        mismatch_px = max(abs(u - v) for u, v in zip(transform[:6], from_coords[:6], strict=True)) / abs(a)
        if mismatch_px > 1e-3:
            raise ValueError(
                f"GeoTransform {tuple(transform[:6])} disagrees with the x/y coordinates "
                f"{tuple(from_coords[:6])}; the store was edited inconsistently, rewrite its grid"
            )
    return GeoBox((height, width), transform, crs)


def _transform_from_coords(ds: xr.Dataset | xr.DataArray) -> Affine | None:
    if "x" not in ds.coords or "y" not in ds.coords or ds.sizes["x"] < 2 or ds.sizes["y"] < 2:
        return None
    x = ds["x"].values
    y = ds["y"].values
    dx = float(x[1] - x[0])
    dy = float(y[1] - y[0])
    return Affine(dx, 0.0, float(x[0]) - dx / 2, 0.0, dy, float(y[0]) - dy / 2)


def _fill_value_of(variable: xr.DataArray, name: str) -> Any:
    fill = variable.encoding.get("_FillValue", variable.attrs.get("_FillValue"))
    if fill is None:
        raise ValueError(
            f"variable {name!r} has no _FillValue in its encoding or attrs; set one so that "
            "unwritten chunks read back as nodata rather than 0"
        )
    return np.asarray(fill, dtype=variable.dtype).item()


def stage_compressors() -> tuple[zarr.codecs.BloscCodec]:
    """Return the compressors of a variable in a store that stages exchange."""
    return (zarr.codecs.BloscCodec(**STAGE_CODEC),)


def prepare_encoding(ds: xr.Dataset, chunks: Mapping[str, int] | None = None) -> xr.Dataset:
    """Return a copy of ``ds`` whose encoding writes the stored values unchanged.

    Each data variable keeps its dtype and values. Its ``_FillValue`` (from
    attrs or encoding) becomes the zarr ``fill_value``, so unwritten chunks
    read back as nodata, and stays an attribute for CF readers. Any other
    encoding, such as a stale ``scale_factor`` from rioxarray, is dropped.
    Chunk sizes come from ``chunks`` or else the dask chunks.
    """
    ds = ds.copy()
    for name, variable in ds.data_vars.items():
        fill = _fill_value_of(variable, name)
        # _FillValue stays a plain attribute for CF readers. Given as an
        # encoding instead, xarray would run its masking encoder over every
        # chunk, which copies each chunk twice although the values are final.
        attrs = {key: value for key, value in variable.attrs.items() if key not in ("_FillValue", "dtype")}
        attrs["_FillValue"] = fill
        encoding: dict[str, Any] = {"fill_value": fill, "compressors": stage_compressors()}
        if "grid_mapping" in variable.encoding:
            encoding["grid_mapping"] = variable.encoding["grid_mapping"]
        if chunks is not None:
            encoding["chunks"] = tuple(min(chunks.get(dim, size), size) for dim, size in variable.sizes.items())
        elif variable.chunks is not None:
            encoding["chunks"] = tuple(_regular_chunk(name, dim, sizes) for dim, sizes in zip(variable.dims, variable.chunks, strict=True))
        ds[name] = variable.copy(deep=False)
        ds[name].attrs = attrs
        ds[name].encoding = encoding
    for name in list(ds.coords):
        coordinate = ds[name]
        if coordinate.dtype.kind == "U":
            # Zarr v3 specifies variable-length strings, but fixed-width
            # numpy strings have no Zarr v3 data type yet.
            ds = ds.assign_coords({name: coordinate.astype(object)})
        ds[name].encoding.pop("chunks", None)
        ds[name].encoding.pop("preferred_chunks", None)
    return ds


def _regular_chunk(name: str, dim: str, sizes: tuple[int, ...]) -> int:
    first = sizes[0]
    if any(size != first for size in sizes[:-1]) or sizes[-1] > first:
        raise ChunkAlignmentError(
            f"variable {name!r} has irregular dask chunks {sizes} along {dim!r}; Zarr needs equal "
            f"chunks except a smaller last one: rechunk with .chunk({{{dim!r}: {first}}})"
        )
    return first


def create_empty_store(
    url: str,
    template: xr.Dataset,
    *,
    chunks: Mapping[str, int] | None = None,
    storage_options: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> str:
    """Create a Zarr v3 store with the template's variables, coordinates and grid, no data chunks.

    Data variables may be lazy (dask) arrays, which are never computed. Every
    data variable needs a ``_FillValue`` (attrs or encoding): unwritten chunks
    read back as that value. Fill the store afterwards with
    :func:`write_region`.

    Parameters
    ----------
    url
        Local folder or object-store URL.
    template
        Dataset with the final shapes, dtypes, coordinates and attrs.
    chunks
        Chunk size per dimension, by default the template's dask chunks.
    overwrite
        Replace an existing store. Without it, an existing store is an error.

    Returns
    -------
    str
        ``url``.
    """
    prepared = prepare_encoding(template, chunks)
    lazy = prepared.copy()
    for name, variable in prepared.data_vars.items():
        lazy[name] = variable.copy(data=da.zeros(variable.shape, dtype=variable.dtype, chunks=-1))
    store = zarr_store(url, "w" if overwrite else "w-", storage_options=storage_options)
    lazy.to_zarr(store, mode="w" if overwrite else "w-", zarr_format=3, consolidated=False, compute=False)
    logger.info("created empty store %s with variables %s", url, list(template.data_vars))
    return url


def write_region(
    ds: xr.Dataset,
    url: str,
    region: Mapping[str, slice],
    *,
    storage_options: dict[str, Any] | None = None,
    compute: bool = True,
) -> Any:
    """Write the data variables of ``ds`` into ``region`` of an existing store.

    Values are written as given (same dtype as the store, no CF encoding).
    Dask-backed variables are stored chunk by chunk from where they are
    computed, so a worker writes its own block.

    Parameters
    ----------
    ds
        Variables whose sizes equal the region's. Coordinates are ignored.
    url
        Store created by :func:`create_empty_store` or a full write.
    region
        Integer slices per dimension, e.g. ``{"y": slice(0, 1024), "x":
        slice(1024, 2048)}``. Dimensions left out are written whole.
    compute
        ``False`` returns a dask ``Delayed`` for dask-backed data.

    Raises
    ------
    ChunkAlignmentError
        If a region edge, or a dask chunk edge inside the region, is not on a
        chunk edge of the store (the last chunk may end at the array's end).
    ValueError
        If a variable is missing from the store or its dtype or shape differ.
    """
    store = zarr_store(url, "r+", storage_options=storage_options)
    group = zarr.open_group(store, mode="r+", zarr_format=3)
    sources, targets, selections = [], [], []
    for name, variable in ds.data_vars.items():
        if name not in group:
            raise ValueError(f"variable {name!r} is not in store {url}; create it with create_empty_store first")
        array = group[name]
        dims = tuple(array.metadata.dimension_names or ())
        if dims != variable.dims:
            raise ValueError(f"variable {name!r} has dims {variable.dims} but the store has {dims}")
        if np.dtype(array.dtype) != variable.dtype:
            raise ValueError(
                f"variable {name!r} is {variable.dtype} but the store contains {array.dtype}; "
                f"cast it with .astype({str(array.dtype)!r}) before writing"
            )
        selection = _aligned_selection(name, variable, array, region)
        sources.append(variable.data)
        targets.append(array)
        selections.append(selection)

    if any(isinstance(source, da.Array) for source in sources):
        lazy_sources = [da.asarray(source) for source in sources]
        return da.store(lazy_sources, targets, regions=selections, lock=False, compute=compute)
    for source, target, selection in zip(sources, targets, selections, strict=True):
        target[selection] = np.asarray(source)
    return None


def _aligned_selection(
    name: str, variable: xr.DataArray, array: zarr.Array, region: Mapping[str, slice]
) -> tuple[slice, ...]:
    selection = []
    for axis, dim in enumerate(variable.dims):
        size = array.shape[axis]
        # With sharding, a shard is the unit two writers must not share.
        chunk = (array.shards or array.chunks)[axis]
        start, stop, step = region.get(dim, slice(0, size)).indices(size)
        if step != 1:
            raise ValueError(f"region[{dim!r}] must have step 1, got {step}")
        if stop - start != variable.shape[axis]:
            raise ValueError(
                f"region[{dim!r}] = {start}:{stop} spans {stop - start} px but variable {name!r} "
                f"has {variable.shape[axis]} along {dim!r}"
            )
        if start % chunk or (stop % chunk and stop != size):
            raise ChunkAlignmentError(
                f"region[{dim!r}] = {start}:{stop} of variable {name!r} is not aligned to the store's "
                f"chunks of {chunk} along {dim!r} (size {size}); start and stop must be multiples "
                f"of {chunk}, or stop the array's end"
            )
        if variable.chunks is not None:
            edges = np.cumsum((start,) + variable.chunks[axis])[:-1]
            misaligned = [int(edge) for edge in edges if edge % chunk]
            if misaligned:
                raise ChunkAlignmentError(
                    f"dask chunks of variable {name!r} along {dim!r} start at {misaligned}, which are not "
                    f"multiples of the store's chunk {chunk}; rechunk with .chunk({{{dim!r}: {chunk}}})"
                )
        selection.append(slice(start, stop))
    return tuple(selection)
