"""Offline search of a local static catalog or folder of STAC item files.

pystac-client cannot search a static catalog, so the search parameters are
turned into one CQL2 filter (:meth:`SearchParameters.full_filter`) and
evaluated per item with the ``cql2`` package: the same semantics as a STAC
API search, without a server.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pystac

from catalog.query import SearchParameters, compile_filter

logger = logging.getLogger(__name__)


def load_local_items(path: str | Path) -> list[pystac.Item]:
    """Load every item of a static catalog (``catalog.json``) or a folder of item JSON files.

    A folder that contains ``catalog.json`` or ``collection.json`` is read as
    a static catalog through its links. Any other folder is scanned
    recursively for GeoJSON Feature files.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    ValueError
        When a JSON file is not valid JSON or a catalog file is not a STAC catalog.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"local catalog {str(path)!r} does not exist; expected a catalog.json or a folder of item JSON files")

    if path.is_dir():
        for name in ("catalog.json", "collection.json"):
            if (path / name).is_file():
                return _catalog_items(path / name)
        return _folder_items(path)
    return _catalog_items(path)


def _catalog_items(path: Path) -> list[pystac.Item]:
    try:
        catalog = pystac.read_file(str(path.resolve()))
    except (json.JSONDecodeError, pystac.STACTypeError) as error:
        raise ValueError(f"{path}: not a STAC catalog, collection or item ({error})") from None
    if isinstance(catalog, pystac.Item):
        return [catalog]
    if not isinstance(catalog, pystac.Catalog):
        raise ValueError(f"{path}: expected a STAC catalog or collection, got {type(catalog).__name__}")
    return list(catalog.get_items(recursive=True))


def _folder_items(folder: Path) -> list[pystac.Item]:
    return [_item_from_file(item_dict, file) for item_dict, file in _folder_item_dicts(folder)]


def _folder_item_dicts(folder: Path) -> list[tuple[dict[str, Any], Path]]:
    item_dicts = []
    for file in sorted(folder.rglob("*.json")):
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{file}: invalid JSON ({error}); remove it from the catalog folder or fix it") from None
        if isinstance(data, dict) and data.get("type") == "Feature":
            item_dicts.append((data, file))
    if not item_dicts:
        logger.warning("no STAC item files found under %s", folder)
    return item_dicts


def _item_from_file(item_dict: dict[str, Any], file: Path) -> pystac.Item:
    item = pystac.Item.from_dict(item_dict, preserve_dict=False, migrate=False)
    item.set_self_href(str(file.resolve()))
    return item


def _candidates(path: Path) -> list[tuple[dict[str, Any], pystac.Item | Path]]:
    """Return (item dict, item or its file) pairs; loose files become pystac items only when they match."""
    if path.is_dir() and not any((path / name).is_file() for name in ("catalog.json", "collection.json")):
        return [(item_dict, file) for item_dict, file in _folder_item_dicts(path)]
    return [(item.to_dict(transform_hrefs=False), item) for item in load_local_items(path)]


def search_local(path: str | Path, parameters: SearchParameters) -> list[pystac.Item]:
    """Search a local catalog with the semantics of a STAC API item search.

    Items are filtered with CQL2 (collections, geometry intersection,
    datetime interval, cloud cover), de-duplicated by id (first file wins),
    sorted and cut to ``parameters.limit``. Items without ``eo:cloud_cover``
    do not match a cloud-cover maximum, as on STAC API servers.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"local catalog {str(path)!r} does not exist; expected a catalog.json or a folder of item JSON files")
    candidates = _candidates(path)
    filter_json = parameters.full_filter()
    expression = compile_filter(filter_json) if filter_json is not None else None

    matched: dict[str, tuple[dict[str, Any], pystac.Item | Path]] = {}
    for item_dict, source in candidates:
        if expression is not None and not _matches(expression, item_dict):
            continue
        if not parameters.matches_cloud_cover(item_dict):
            continue
        item_id = str(item_dict.get("id"))
        if item_id in matched:
            logger.warning("local catalog %s contains item id %s more than once; keeping the first", path, item_id)
            continue
        matched[item_id] = (item_dict, source)

    ordered = parameters.sort(item_dict for item_dict, _ in matched.values())
    if parameters.limit is not None:
        ordered = ordered[: parameters.limit]
    result = []
    for item_dict in ordered:
        source = matched[str(item_dict["id"])][1]
        result.append(source if isinstance(source, pystac.Item) else _item_from_file(item_dict, source))
    logger.info("local search of %s: %d of %d items match", path, len(result), len(candidates))
    return result


def _matches(expression: Any, item_dict: dict[str, Any]) -> bool:
    # The filter never reads assets or links, and handing them to cql2 costs most of the time.
    item_dict = {key: value for key, value in item_dict.items() if key not in ("assets", "links")}
    properties = item_dict.get("properties") or {}
    if properties.get("datetime") is None and properties.get("start_datetime"):
        # Items with a time range and a null datetime are matched on their start.
        item_dict["properties"] = {**properties, "datetime": properties["start_datetime"]}
    try:
        return bool(expression.matches(item_dict))
    except Exception:  # noqa: BLE001 - cql2 raises a bare Exception when a property is missing
        return False
