"""Load items into a pgstac database, the usual backend of an in-house STAC API."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import pystac
import shapely.geometry

logger = logging.getLogger(__name__)


def collection_for_items(collection_id: str, items: Sequence[pystac.Item], description: str | None = None) -> dict[str, Any]:
    """Return a STAC collection whose extent covers ``items``."""
    # Declared bboxes are often rounded outwards, so they win over the geometry's exact bounds.
    bounds = [
        _bbox_2d(item.bbox) if item.bbox else shapely.geometry.shape(item.geometry).bounds
        for item in items
        if item.bbox or item.geometry
    ]
    spatial = (
        [min(b[0] for b in bounds), min(b[1] for b in bounds), max(b[2] for b in bounds), max(b[3] for b in bounds)]
        if bounds else [-180.0, -90.0, 180.0, 90.0]
    )
    times = sorted(
        (item.datetime or item.common_metadata.start_datetime).strftime("%Y-%m-%dT%H:%M:%SZ") for item in items
    )
    return {
        "type": "Collection",
        "stac_version": "1.1.0",
        "id": collection_id,
        "description": description or f"Scenes of collection {collection_id}",
        "license": "other",
        "extent": {
            "spatial": {"bbox": [spatial]},
            "temporal": {"interval": [[times[0], times[-1]] if times else [None, None]]},
        },
        "links": [],
    }


def _bbox_2d(bbox: Sequence[float]) -> tuple[float, float, float, float]:
    """Return (west, south, east, north) of a 2D or 3D STAC bbox."""
    if len(bbox) == 6:
        return bbox[0], bbox[1], bbox[3], bbox[4]
    return bbox[0], bbox[1], bbox[2], bbox[3]


def load_into_pgstac(
    items: Sequence[pystac.Item | Mapping[str, Any]],
    dsn: str,
    *,
    collections: Sequence[Mapping[str, Any]] | None = None,
) -> int:
    """Insert or update items (and their collections) in a pgstac database.

    Parameters
    ----------
    items
        Items to load; each needs a ``collection`` id.
    dsn
        PostgreSQL connection string of a database migrated with pgstac, e.g.
        ``postgresql://user:password@host:5432/postgis``.
    collections
        Collections to upsert first. ``None`` creates one per collection id
        used by the items, with an extent covering them.

    Returns
    -------
    int
        Number of items loaded.

    Raises
    ------
    ImportError
        When pypgstac is not installed (``pip install fleximo-pipeline[pgstac]``).
    ValueError
        When an item has no collection id.
    """
    try:
        from pypgstac.db import PgstacDB
        from pypgstac.load import Loader, Methods
    except ImportError as error:
        raise ImportError(
            "loading into pgstac needs pypgstac; install it with `pip install fleximo-pipeline[pgstac]`"
        ) from error

    item_dicts = [item.to_dict(transform_hrefs=False) if isinstance(item, pystac.Item) else dict(item) for item in items]
    missing = [d.get("id") for d in item_dicts if not d.get("collection")]
    if missing:
        raise ValueError(f"items without a collection id cannot be loaded into pgstac: {missing[:5]}; set item.collection_id")

    if collections is None:
        by_collection: dict[str, list[pystac.Item]] = {}
        for item_dict in item_dicts:
            by_collection.setdefault(item_dict["collection"], []).append(pystac.Item.from_dict(item_dict, migrate=False))
        collections = [collection_for_items(cid, members) for cid, members in by_collection.items()]

    with PgstacDB(dsn=dsn) as db:
        loader = Loader(db=db)
        loader.load_collections(iter([dict(c) for c in collections]), insert_mode=Methods.upsert)
        loader.load_items(iter(item_dicts), insert_mode=Methods.upsert)
    logger.info("loaded %d items into pgstac (%d collections)", len(item_dicts), len(collections))
    return len(item_dicts)
