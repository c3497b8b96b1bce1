"""Scene search: any STAC API (through pystac-client), a preset, or a local catalog."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pystac
import requests
from pystac_client import Client
from pystac_client.conformance import ConformanceClasses
from pystac_client.exceptions import APIError
from pystac_client.stac_api_io import StacApiIO
from urllib3.util.retry import Retry

from catalog.local_search import search_local
from catalog.presets import PRESETS
from catalog.query import SearchParameters, build_parameters

logger = logging.getLogger(__name__)

RETRY_STATUSES = (429, 500, 502, 503, 504)
PAGE_SIZE = 100
PAGING_ATTEMPTS = 2


class StacApiError(RuntimeError):
    """A STAC API request that failed after retries, or a search whose paging lost items."""

    def __init__(self, message: str, *, url: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status_code = status_code


def search_items(
    source: str | os.PathLike[str],
    *,
    collections: Sequence[str] | None = None,
    bbox: tuple[float, float, float, float] | None = None,
    intersects: dict | None = None,
    datetime: str | None = None,
    max_cloud_cover: float | None = None,
    limit: int | None = None,
    sortby: str | None = None,
    max_retries: int = 4,
    backoff_s: float = 1.0,
    timeout_s: float = 60.0,
    page_size: int = PAGE_SIZE,
) -> list[pystac.Item]:
    """Find the scenes that cover an area and time range.

    Parameters
    ----------
    source
        A STAC API URL, a preset name (``"earth-search"``,
        ``"planetary-computer"``, ``"cdse"``), or a local path: a folder of
        item JSON files or a ``catalog.json``, searched offline with the same
        semantics.
    collections
        Collection ids; ``None`` means the preset's default collection, or
        every collection of a URL or local catalog.
    bbox, intersects
        Search area: ``(west, south, east, north)`` in EPSG:4326 degrees, or
        a GeoJSON geometry. At most one of them.
    datetime
        RFC 3339 instant or ``start/end`` interval; ``..`` opens an end and a
        ``YYYY-MM-DD`` end includes that whole day.
    max_cloud_cover
        Maximum ``eo:cloud_cover`` in percent. Sent as a CQL2 filter where the
        server conforms to the Filter extension, as ``query`` otherwise, and
        always checked on the results. Items with unknown cover are dropped.
    limit
        Maximum number of items returned; ``None`` pages through all matches.
    sortby
        ``"eo:cloud_cover"`` or ``"datetime"`` with an optional ``+``/``-``
        prefix. Sorted by the server where it supports sorting, otherwise
        after fetching every match.
    max_retries, backoff_s, timeout_s
        Retries of each request on HTTP 429/5xx, connection errors and
        timeouts, with exponential backoff starting at ``backoff_s`` seconds;
        ``timeout_s`` is the connect/read timeout per request.
    page_size
        Items requested per page from a STAC API.

    Returns
    -------
    list of pystac.Item
        Unique by item id, in the requested order (else the server's).

    Raises
    ------
    StacApiError
        When a request still fails after the retries (the message names the
        URL and the HTTP status), or when paging returned fewer unique items
        than the server reported as matched.
    ValueError
        On invalid parameters or an unknown preset.
    """
    source = os.fspath(source)
    preset = PRESETS.get(source)
    if preset is not None:
        url = preset.url
        collections = list(preset.default_collections) if collections is None else collections
    else:
        url = source

    parameters = build_parameters(
        collections=collections,
        bbox=bbox,
        intersects=intersects,
        datetime=datetime,
        max_cloud_cover=max_cloud_cover,
        limit=limit,
        sortby=sortby,
    )
    if not url.startswith(("http://", "https://")):
        if not Path(url).expanduser().exists():
            raise ValueError(
                f"catalog source {source!r} is neither a preset ({', '.join(PRESETS)}), "
                "an http(s) STAC API URL, nor an existing local catalog path"
            )
        return search_local(Path(url), parameters)
    if page_size < 1:
        raise ValueError(f"invalid page_size {page_size!r}; expected a positive number of items per page")
    return _search_api(
        url, parameters, max_retries=max_retries, backoff_s=backoff_s, timeout_s=timeout_s, page_size=page_size
    )


def open_client(url: str, *, max_retries: int = 4, backoff_s: float = 1.0, timeout_s: float = 60.0) -> Client:
    """Open a STAC API with retries on HTTP 429/5xx, connection errors and timeouts.

    Raises
    ------
    StacApiError
        When the landing page still cannot be read after the retries.
    """
    retry = Retry(
        total=max_retries,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=None,  # POST searches are read-only, so retrying them is safe
        backoff_factor=backoff_s,
        raise_on_status=False,
        respect_retry_after_header=True,
    )
    stac_io = StacApiIO(timeout=timeout_s, max_retries=retry)
    try:
        return Client.open(url, stac_io=stac_io)
    except APIError as error:
        raise _api_error(url, error, max_retries) from None


def _api_error(url: str, error: APIError, max_retries: int) -> StacApiError:
    status = getattr(error, "status_code", None)
    detail = str(error).strip().replace("\n", " ")[:300]
    if status is not None:
        message = f"STAC API request to {url} failed with HTTP {status} after {max_retries} retries: {detail}"
    else:
        message = f"STAC API request to {url} failed after {max_retries} retries: {detail}"
    return StacApiError(message + "; check the URL and the server's status, or retry later", url=url, status_code=status)


def _search_api(
    url: str, parameters: SearchParameters, *, max_retries: int, backoff_s: float, timeout_s: float, page_size: int
) -> list[pystac.Item]:
    client = open_client(url, max_retries=max_retries, backoff_s=backoff_s, timeout_s=timeout_s)
    search_link = client.get_search_link()
    search_url = search_link.href if search_link is not None else f"{url.rstrip('/')}/search"
    if not client.conforms_to(ConformanceClasses.ITEM_SEARCH):
        raise ValueError(f"{url} is not a STAC API with item search; pass an API root URL or a local catalog path")

    arguments: dict[str, Any] = {
        "collections": list(parameters.collections) if parameters.collections is not None else None,
        "bbox": list(parameters.bbox) if parameters.bbox is not None else None,
        "intersects": parameters.intersects,
        "datetime": parameters.datetime_text,
    }
    server_filters_cloud = True
    if parameters.max_cloud_cover is not None:
        if client.conforms_to(ConformanceClasses.FILTER):
            # cql2-json: some servers (stac-fastapi-pgstac) reject cql2-text in POST bodies.
            arguments["filter"] = parameters.cloud_filter()
            arguments["filter_lang"] = "cql2-json"
        elif client.conforms_to(ConformanceClasses.QUERY):
            arguments["query"] = {"eo:cloud_cover": {"lte": parameters.max_cloud_cover}}
        else:
            server_filters_cloud = False
            logger.info("%s supports neither filter nor query; cloud cover is filtered after download", url)

    server_sorts = parameters.sortby is not None and client.conforms_to(ConformanceClasses.SORT)
    if server_sorts:
        arguments["sortby"] = parameters.sortby_text
    elif parameters.sortby is not None:
        logger.info("%s does not support sorting; fetching every match to sort it here", url)
    # Without server-side sorting or filtering, the first `limit` items are not the `limit` requested ones.
    server_orders = parameters.sortby is None or server_sorts
    stop_after = parameters.limit if (server_orders and server_filters_cloud) else None
    page_size = min(page_size, stop_after) if stop_after else page_size

    unique: dict[str, dict[str, Any]] = {}
    for attempt in range(1, PAGING_ATTEMPTS + 1):
        search = client.search(limit=page_size, **{k: v for k, v in arguments.items() if v is not None})
        found, matched, duplicates, exhausted = _collect_pages(search, search_url, stop_after, max_retries)
        # Items that moved between pages during one pass can show up in the next.
        unique = {**found, **{k: v for k, v in unique.items() if k not in found}}
        short = exhausted and matched is not None and len(unique) < matched
        if not short or attempt == PAGING_ATTEMPTS:
            break
        logger.warning(
            "%s matched %d items but paging returned %d unique ones; paging again (attempt %d of %d)",
            search_url, matched, len(unique), attempt + 1, PAGING_ATTEMPTS,
        )
    _check_count(search_url, unique, matched, duplicates, exhausted, stop_after)

    within_cloud_cover = [item for item in unique.values() if parameters.matches_cloud_cover(item)]
    dropped = len(unique) - len(within_cloud_cover)
    if dropped:
        logger.info("dropped %d items above %s%% cloud cover or without cloud cover", dropped, parameters.max_cloud_cover)
    ordered = within_cloud_cover if server_sorts else parameters.sort(within_cloud_cover)
    if parameters.limit is not None:
        ordered = ordered[: parameters.limit]
    logger.info("search of %s: %d items (server matched %s)", search_url, len(ordered), matched)
    return [pystac.Item.from_dict(item, preserve_dict=False, migrate=False) for item in ordered]


def _collect_pages(
    search: Any, search_url: str, stop_after: int | None, max_retries: int
) -> tuple[dict[str, dict[str, Any]], int | None, int, bool]:
    unique: dict[str, dict[str, Any]] = {}
    matched: int | None = None
    duplicates = 0
    try:
        for page_number, page in enumerate(search.pages_as_dicts()):
            if page_number == 0:
                matched = page.get("numberMatched", (page.get("context") or {}).get("matched"))
            for feature in page.get("features", []):
                if feature["id"] in unique:
                    duplicates += 1
                    continue
                unique[feature["id"]] = feature
            if stop_after is not None and len(unique) >= stop_after:
                return unique, matched, duplicates, False
    except APIError as error:
        raise _api_error(search_url, error, max_retries) from None
    except requests.RequestException as error:
        raise StacApiError(f"STAC API request to {search_url} failed: {error}", url=search_url) from None
    return unique, matched, duplicates, True


def _check_count(
    search_url: str,
    unique: dict[str, dict[str, Any]],
    matched: int | None,
    duplicates: int,
    exhausted: bool,
    stop_after: int | None,
) -> None:
    if duplicates:
        logger.warning("%s returned %d duplicate items while paging; kept one of each", search_url, duplicates)
    if matched is None or not exhausted:
        return
    if len(unique) < matched:
        raise StacApiError(
            f"STAC API search at {search_url} matched {matched} items but paging returned only "
            f"{len(unique)} unique items after {PAGING_ATTEMPTS} passes ({duplicates} duplicates dropped "
            "in the last): the server lost items between pages; retry later, or narrow the search "
            "(shorter time range, smaller area)",
            url=search_url,
        )
    if len(unique) > matched:
        logger.warning("%s matched %d items but returned %d unique ones; the count is an estimate", search_url, matched, len(unique))
