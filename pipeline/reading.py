"""Read one band asset onto a target grid, retrying transient failures.

Each read opens the asset with rasterio (GDAL: local files, ``https://``,
``s3://`` through ``/vsis3/``) and warps the part that covers the target
GeoBox into a float32 array, NaN where the asset has no data. Assets that are
not map-projected (Gaofen Level-1A) are placed through their RPCs.

A read that still fails after the retries raises :class:`AssetReadError`
naming the asset URL, and never returns an array of nodata.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import re
import time
from collections.abc import Callable, Sequence
from typing import Literal, TypeVar

import numpy as np
import rasterio
import rasterio.io
from odc.geo.geobox import GeoBox
from odc.geo.crs import CRS
from rasterio.enums import Resampling
from rasterio.windows import Window
from rasterio.warp import reproject

from catalog.scene import BandInfo, SceneDescription
from catalog.signing import sign_planetary_computer_href

logger = logging.getLogger(__name__)

T = TypeVar("T")
ResamplingName = Literal["nearest", "bilinear", "cubic", "average", "mode"]

# GDAL messages of failures that a later attempt can get past: HTTP 5xx and
# 429, timeouts, dropped connections, and tiles that came back short.
_TRANSIENT_PATTERN = re.compile(
    r"HTTP (response )?code:? ?(5\d\d|429)|timed? ?out|timeout|connection (reset|refused|aborted|closed)"
    r"|truncat|short read|read error|IReadBlock failed|TIFFFillTile|TIFFReadEncoded|Couldn't resolve"
    r"|curl error|premature end",
    re.IGNORECASE,
)

# GDAL settings for reads: no directory listing or sidecar probing when
# opening an asset (each costs a request on object storage), and one merged
# range request for neighbouring blocks.
GDAL_READ_OPTIONS = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MULTIRANGE": "YES",
}
# Level-1A assets keep their RPCs in a sidecar (.rpb, _rpc.txt) that GDAL
# finds only when it may look beside the file.
GDAL_SIDECAR_OPTIONS = {**GDAL_READ_OPTIONS, "GDAL_DISABLE_READDIR_ON_OPEN": "FALSE"}


class AssetReadError(OSError):
    """An asset that could not be read, named by ``href``."""

    def __init__(self, message: str, href: str) -> None:
        super().__init__(message)
        self.href = href


class NotGeoreferencedError(ValueError):
    """An asset with neither a CRS nor RPCs, which cannot be placed on a map."""


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry a failed asset read.

    Parameters
    ----------
    attempts
        Total tries, the first included.
    backoff_s
        Delay before the second try in seconds. It doubles on each later
        try, up to ``max_backoff_s``, with up to 25 % random jitter.
    """

    attempts: int = 4
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"RetryPolicy.attempts must be at least 1, got {self.attempts}")
        if self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError(f"RetryPolicy delays must be non-negative, got {self.backoff_s}, {self.max_backoff_s}")

    def delay_s(self, failed_attempts: int) -> float:
        """Seconds to wait after ``failed_attempts`` failures."""
        base = min(self.backoff_s * 2 ** (failed_attempts - 1), self.max_backoff_s)
        return base * (1 + 0.25 * random.random())


def is_transient(error: BaseException) -> bool:
    """Return whether ``error``, or an error it was raised from, is one a retry can get past.

    rasterio reports a failed tile read inside a warp as a generic
    ``WarpOperationError`` whose causes carry GDAL's messages, so the whole
    chain is checked.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (TimeoutError, ConnectionError)):
            return True
        from_gdal = type(current).__module__.startswith("rasterio")
        if (from_gdal or isinstance(current, OSError)) and _TRANSIENT_PATTERN.search(str(current)):
            return True
        current = current.__cause__ or current.__context__
    return False


def read_band(
    band: BandInfo,
    geobox: GeoBox,
    *,
    resampling: ResamplingName = "bilinear",
    retry: RetryPolicy = RetryPolicy(),
    sidecars: bool = False,
    overviews: bool = False,
) -> np.ndarray:
    """Read ``band`` resampled onto ``geobox``.

    Parameters
    ----------
    band
        The asset and band index to read; ``band.nodata`` (or, when that is
        ``None``, the file's own nodata) marks missing pixels.
    geobox
        Target grid, usually one block of the job grid.
    resampling
        GDAL resampling kernel. Categorical bands need ``"nearest"`` or ``"mode"``.
    retry
        Retry policy for transient failures.
    sidecars
        Let GDAL look for sidecar files beside the asset (needed for RPCs in
        ``.rpb`` files). Off by default because each probe is a request.
    overviews
        Warp from the coarsest overview of the asset that is still at least as
        fine as ``geobox``, as ``gdalwarp`` does by default. Its values then
        come from the overview's own resampling, so leave it off for
        categorical bands.

    Returns
    -------
    numpy.ndarray
        float32 ``(height, width)`` of stored values (before scale and
        offset), NaN where the asset has no data or does not reach.

    Raises
    ------
    AssetReadError
        If the asset fails on every attempt, or fails with a permanent error.
    NotGeoreferencedError
        If the asset has neither a CRS nor RPCs.
    """
    return _with_retries(lambda fresh: _warp_band(band, geobox, resampling, sidecars, overviews, fresh), band, retry)


def check_asset(band: BandInfo, *, retry: RetryPolicy = RetryPolicy(), sidecars: bool = False) -> None:
    """Open ``band``'s asset and check that it can be placed on a map, with retries.

    Reads only the header, so a job can find unreadable assets before it
    loads anything and decide whether to skip their scenes.

    Raises
    ------
    AssetReadError
        If the asset cannot be opened or lacks the band index.
    NotGeoreferencedError
        If the asset has neither a CRS nor RPCs.
    """

    def open_asset(fresh: bool) -> None:
        with rasterio.Env(**_gdal_options(band.href, sidecars, fresh)), rasterio.open(_signed(band.href)) as src:
            _check_georeferenced(src, band)

    _with_retries(open_asset, band, retry)


def _with_retries(operation: Callable[[bool], T], band: BandInfo, retry: RetryPolicy) -> T:
    """Run ``operation(fresh)`` until it succeeds, retrying transient failures.

    ``fresh`` is ``True`` on retries, when GDAL's caches must be bypassed.
    """
    failures = 0
    while True:
        try:
            return operation(failures > 0)
        except NotGeoreferencedError:
            raise
        except Exception as error:  # noqa: BLE001  (GDAL raises several unrelated types)
            failures += 1
            if not is_transient(error):
                raise AssetReadError(f"failed to read asset {band.href} (band {band.name}): {error}", band.href) from error
            if failures >= retry.attempts:
                raise AssetReadError(
                    f"failed to read asset {band.href} (band {band.name}) after {failures} attempts: {error}",
                    band.href,
                ) from error
            delay = retry.delay_s(failures)
            logger.warning(
                "read of asset %s failed (attempt %d of %d), retrying in %.1f s: %s",
                band.href,
                failures,
                retry.attempts,
                delay,
                error,
            )
            time.sleep(delay)


_VSI_PREFIXES = {"http": "/vsicurl/", "https": "/vsicurl/", "s3": "/vsis3/", "gs": "/vsigs/", "az": "/vsiaz/"}


def _signed(href: str) -> str:
    """Return ``href`` ready to open: Planetary Computer blob URLs get a fresh SAS token.

    Signing happens here, at read time, because tokens expire during long jobs;
    messages keep naming the unsigned ``band.href``.
    """
    return sign_planetary_computer_href(href)


def gdal_path(href: str) -> str:
    """Return the GDAL virtual file system path of ``href`` (``s3://b/k`` -> ``/vsis3/b/k``)."""
    scheme, _, rest = href.partition("://")
    if not rest or scheme not in _VSI_PREFIXES:
        return href
    return _VSI_PREFIXES[scheme] + (href if scheme.startswith("http") else rest)


def _gdal_options(href: str, sidecars: bool, fresh: bool) -> dict[str, str]:
    options = dict(GDAL_SIDECAR_OPTIONS if sidecars else GDAL_READ_OPTIONS)
    if fresh:
        # GDAL caches a remote file's size, existence and blocks across opens,
        # failures included, and a retry must bypass that cache.
        options["CPL_VSIL_CURL_NON_CACHED"] = gdal_path(href)
    return options


def _check_georeferenced(src: rasterio.io.DatasetReader, band: BandInfo) -> None:
    if band.band_index > src.count:
        raise ValueError(f"asset {band.href} has {src.count} bands but band {band.name} has band index {band.band_index}")
    if src.crs is None and not src.rpcs:
        raise NotGeoreferencedError(
            f"asset {band.href} has no map projection and no RPCs, so it cannot be placed on the "
            "grid; orthorectify it first or supply its .rpb/_rpc.txt file beside it"
        )


def _warp_band(
    band: BandInfo, geobox: GeoBox, resampling: ResamplingName, sidecars: bool, overviews: bool, fresh: bool
) -> np.ndarray:
    with rasterio.Env(**_gdal_options(band.href, sidecars, fresh)):
        href = _signed(band.href)
        with rasterio.open(href) as src:
            _check_georeferenced(src, band)
            source_nodata = band.nodata if band.nodata is not None else src.nodata
            offset = _pixel_offset_on_same_grid(src, geobox)
            if offset is not None:
                return _read_window(src, band.band_index, geobox, offset, source_nodata)
            level = _overview_level(src, band.band_index, geobox) if overviews else None
            if level is None:
                return _reproject(src, band.band_index, geobox, resampling, source_nodata)

        with rasterio.open(href, overview_level=level) as overview:
            return _reproject(overview, band.band_index, geobox, resampling, source_nodata)


def _overview_level(src: rasterio.io.DatasetReader, band_index: int, geobox: GeoBox) -> int | None:
    """Return the coarsest overview of ``src`` that is still at least as fine as ``geobox``.

    ``None`` when there is none, or when pixel sizes cannot be compared
    (RPC placement, or CRS units that differ).
    """
    factors = src.overviews(band_index)
    if not factors or src.crs is None or geobox.crs is None:
        return None
    if CRS(src.crs.to_wkt()).units != geobox.crs.units:
        return None
    ratio = abs(geobox.resolution.x) / abs(src.transform.a)
    usable = [level for level, factor in enumerate(factors) if factor <= ratio]
    return usable[-1] if usable else None


def _reproject(
    src: rasterio.io.DatasetReader, band_index: int, geobox: GeoBox, resampling: ResamplingName, nodata: float | None
) -> np.ndarray:
    placement: dict = {}
    if src.crs is None:
        # NOTE: RPC placement uses the RPCs' mean height offset instead of a
        # DEM, so relief shifts pixels by roughly height error x tan(view angle).
        placement = {"rpcs": src.rpcs, "src_crs": "EPSG:4326"}
    destination = np.full(geobox.shape.yx, np.nan, dtype=np.float32)
    reproject(
        source=rasterio.band(src, band_index),
        destination=destination,
        src_nodata=nodata,
        dst_transform=geobox.affine,
        dst_crs=geobox.crs.wkt,
        dst_nodata=np.nan,
        resampling=Resampling[resampling],
        **placement,
    )
    return destination


def _pixel_offset_on_same_grid(src: rasterio.io.DatasetReader, geobox: GeoBox) -> tuple[int, int] | None:
    """Return the (row, column) of ``geobox``'s origin in ``src`` when both share one pixel grid.

    Then every resampling kernel reduces to copying pixels, and a windowed
    read gives the same values as a warp in a fraction of the time.
    """
    if src.crs is None or geobox.crs is None or CRS(src.crs.to_wkt()) != geobox.crs:
        return None
    source, target = src.transform, geobox.affine
    if any(abs(u - v) > 1e-9 * max(1.0, abs(u)) for u, v in zip(source[:2] + source[3:5], target[:2] + target[3:5], strict=True)):
        return None
    if source.b != 0 or source.d != 0:
        return None
    column = (target.c - source.c) / source.a
    row = (target.f - source.f) / source.e
    if abs(column - round(column)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return None
    return round(row), round(column)


def _read_window(
    src: rasterio.io.DatasetReader, band_index: int, geobox: GeoBox, offset: tuple[int, int], nodata: float | None
) -> np.ndarray:
    height, width = geobox.shape.yx
    destination = np.full((height, width), np.nan, dtype=np.float32)
    row0, column0 = offset
    top, left = max(row0, 0), max(column0, 0)
    bottom, right = min(row0 + height, src.height), min(column0 + width, src.width)
    if bottom <= top or right <= left:
        return destination

    window = Window(left, top, right - left, bottom - top)
    values = src.read(band_index, window=window, out_dtype=np.float32)
    if nodata is not None:
        values[values == np.float32(nodata)] = np.nan
    destination[top - row0 : bottom - row0, left - column0 : right - column0] = values
    return destination


@dataclasses.dataclass(frozen=True)
class SkippedScene:
    """A scene left out of a job because one of its assets could not be read."""

    item_id: str
    href: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        """Return the record as a JSON-ready dict, for the run manifest."""
        return dataclasses.asdict(self)


def check_scenes(
    scenes: Sequence[SceneDescription],
    *,
    bands: Sequence[str] | None = None,
    on_error: Literal["raise", "skip"] = "raise",
    retry: RetryPolicy = RetryPolicy(),
) -> tuple[list[SceneDescription], list[SkippedScene]]:
    """Open every asset the job will read (headers only), retrying transient failures.

    Parameters
    ----------
    scenes
        Scenes of the job.
    bands
        Band names that will be loaded. ``None`` checks every reflectance and
        classification band, as ``pipeline.ingest.load_observation`` loads them.
    on_error
        ``"raise"`` raises the first failure. ``"skip"`` leaves the scene out
        and records it, so the caller can write it to the run manifest.
    retry
        Retry policy for transient failures.

    Returns
    -------
    tuple
        The readable scenes in their order, and one :class:`SkippedScene` per
        scene left out.

    Raises
    ------
    AssetReadError, NotGeoreferencedError
        With ``on_error="raise"``, for the first asset that fails.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    kept: list[SceneDescription] = []
    skipped: list[SkippedScene] = []
    for scene in scenes:
        if bands is None:
            selected = [band for band in scene.bands if band.role in ("reflectance", "classification")]
        else:
            selected = [scene.band(name) for name in bands]
        # Bands of one multi-band asset share its href, which is checked once.
        one_band_per_asset: dict[str, BandInfo] = {}
        for band in selected:
            one_band_per_asset.setdefault(band.href, band)
        try:
            for band in one_band_per_asset.values():
                check_asset(band, retry=retry, sidecars=not scene.map_projected)
        except (AssetReadError, NotGeoreferencedError) as error:
            if on_error == "raise":
                raise
            logger.warning("skipping scene %s because asset %s failed: %s", scene.item_id, band.href, error)
            skipped.append(SkippedScene(scene.item_id, band.href, str(error)))
            continue
        kept.append(scene)
    return kept, skipped
