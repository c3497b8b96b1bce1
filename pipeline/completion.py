"""Completion marker of an output store, and readers that check it.

A Zarr store is a tree of many objects, so a writer that stops halfway
leaves a store that opens fine but holds fill values where blocks were never
written. The mosaic stage therefore records completion as its very last
step, after every block, overview and attribute, and removes the record as
its very first step when it (re)writes a store. The record is the root
group attribute ``fleximo_completion``, a small mapping. It lives in the
root ``zarr.json``, which a store writes as one object. An extra file in
the store would work too, but zarr warns about every object it does not
recognise. Readers call :func:`open_mosaic` or :func:`require_complete`,
which reject a store without the record.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import xarray as xr
import zarr
import zarr.errors

from pipeline.stores import zarr_store

logger = logging.getLogger(__name__)

COMPLETION_ATTR = "fleximo_completion"


class IncompleteStoreError(RuntimeError):
    """Raised when a store is read that was not written to the end."""


def _incomplete_message(url: str) -> str:
    return (
        f"store {url!r} is not complete: its writer did not finish (no {COMPLETION_ATTR!r} "
        "attribute); rerun the stage that writes it"
    )


def _root_attrs(url: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    try:
        group = zarr.open_group(zarr_store(url, "r", storage_options=dict(storage_options or {})), mode="r", zarr_format=3)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError):
        return None
    return dict(group.attrs)


def is_complete(url: str, storage_options: Mapping[str, Any] | None = None) -> bool:
    """Return whether the store at ``url`` exists and carries a completion record."""
    attrs = _root_attrs(url, storage_options)
    return attrs is not None and COMPLETION_ATTR in attrs


def completion_info(url: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Return the completion record of the store at ``url``.

    Raises
    ------
    IncompleteStoreError
        If the store is missing or has no completion record.
    """
    attrs = _root_attrs(url, storage_options)
    if attrs is None or COMPLETION_ATTR not in attrs:
        raise IncompleteStoreError(_incomplete_message(url))
    return dict(attrs[COMPLETION_ATTR])


def mark_complete(url: str, info: Mapping[str, Any], storage_options: Mapping[str, Any] | None = None) -> None:
    """Record that the store at ``url`` is complete.

    Call this only after every block and all other metadata of the store are
    written. ``info`` must be JSON-serialisable; the time of completion (UTC,
    ISO 8601) is added as ``completed_at``.
    """
    record = {**info, "completed_at": datetime.now(UTC).isoformat(timespec="seconds")}
    group = zarr.open_group(zarr_store(url, "r+", storage_options=dict(storage_options or {})), mode="r+", zarr_format=3)
    group.attrs[COMPLETION_ATTR] = record
    logger.info("marked %s complete", url)


def clear_complete(url: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Remove the completion record of the store at ``url``, if there is one.

    A writer calls this before it changes a store, so that a store it leaves
    halfway is never reported complete.
    """
    if is_complete(url, storage_options):
        group = zarr.open_group(zarr_store(url, "r+", storage_options=dict(storage_options or {})), mode="r+", zarr_format=3)
        del group.attrs[COMPLETION_ATTR]
        logger.info("removed the completion record of %s before rewriting it", url)


def require_complete(url: str) -> None:
    """Raise :class:`IncompleteStoreError` unless the store at ``url`` is complete."""
    if not is_complete(url):
        raise IncompleteStoreError(_incomplete_message(url))


def open_mosaic(url: str, *, level: int = 0, chunks: Any = None) -> xr.Dataset:
    """Open a finished mosaic store, or one of its overview levels, with xarray.

    Parameters
    ----------
    url
        Location of the mosaic store (local path or fsspec URL).
    level
        0 for full resolution; ``k`` for the overview reduced by ``2**k``.
    chunks
        Passed to :func:`xarray.open_zarr`; ``None`` gives one dask chunk per
        stored chunk.

    Returns
    -------
    xarray.Dataset
        Lazily loaded layers with the grid decoded (``.rio.crs`` and
        ``.rio.transform()`` work).

    Raises
    ------
    IncompleteStoreError
        If the store has no completion record.
    ValueError
        If the store has no overview ``level``.
    """
    record = completion_info(url)
    levels = int(record.get("overview_levels", 0))
    if not 0 <= level <= levels:
        raise ValueError(f"level is {level}; store {url!r} has levels 0 to {levels} (0 is full resolution)")
    group = None if level == 0 else str(level)
    return xr.open_zarr(
        zarr_store(url, "r"),
        group=group,
        chunks={} if chunks is None else chunks,
        decode_coords="all",
        zarr_format=3,
        consolidated=False,
    )
