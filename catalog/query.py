"""Search parameters shared by STAC API and local catalog searches.

Parameters are validated once here and turned into a CQL2 filter, which the
local search evaluates with the ``cql2`` package and which API searches send
where the server conforms to the Filter extension.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime, time, timezone
from typing import Any

import cql2
import shapely.geometry

from catalog.describe import cloud_cover, item_datetime

logger = logging.getLogger(__name__)

SORTABLE_FIELDS = {"eo:cloud_cover", "datetime"}
_SORTBY = re.compile(r"^([+-]?)(?:properties\.)?(eo:cloud_cover|datetime)$")


@dataclasses.dataclass(frozen=True)
class SearchParameters:
    """Validated search parameters; see :func:`catalog.search_items` for their meaning."""

    collections: tuple[str, ...] | None = None
    bbox: tuple[float, float, float, float] | None = None
    intersects: dict[str, Any] | None = None
    datetime_range: tuple[datetime | None, datetime | None] | None = None
    max_cloud_cover: float | None = None
    limit: int | None = None
    sortby: tuple[str, bool] | None = None  # (field, descending)

    @property
    def datetime_text(self) -> str | None:
        """The datetime range as an RFC 3339 interval for STAC APIs (``start/end``, ``..`` if open)."""
        if self.datetime_range is None:
            return None
        start, end = self.datetime_range
        return f"{_rfc3339(start) if start else '..'}/{_rfc3339(end) if end else '..'}"

    @property
    def sortby_text(self) -> str | None:
        """The sort order in STAC API form, e.g. ``"-eo:cloud_cover"``."""
        if self.sortby is None:
            return None
        field, descending = self.sortby
        return f"{'-' if descending else '+'}{field}"

    def cloud_filter(self) -> dict[str, Any] | None:
        """Return the CQL2-JSON filter ``eo:cloud_cover <= max``, or ``None`` without a maximum."""
        if self.max_cloud_cover is None:
            return None
        return {"op": "<=", "args": [{"property": "eo:cloud_cover"}, self.max_cloud_cover]}

    def full_filter(self) -> dict[str, Any] | None:
        """Return one CQL2-JSON filter for every parameter except limit and sort order."""
        clauses: list[dict[str, Any]] = []
        if self.collections is not None:
            clauses.append({"op": "in", "args": [{"property": "collection"}, list(self.collections)]})
        geometry = self.search_geometry()
        if geometry is not None:
            clauses.append({"op": "s_intersects", "args": [{"property": "geometry"}, geometry]})
        if self.datetime_range is not None:
            start, end = self.datetime_range
            interval = [_rfc3339(start) if start else "..", _rfc3339(end) if end else ".."]
            clauses.append({"op": "t_intersects", "args": [{"property": "datetime"}, {"interval": interval}]})
        cloud = self.cloud_filter()
        if cloud is not None:
            clauses.append(cloud)
        if not clauses:
            return None
        return clauses[0] if len(clauses) == 1 else {"op": "and", "args": clauses}

    def search_geometry(self) -> dict[str, Any] | None:
        """Return the search area as GeoJSON (the bbox as a polygon), or ``None``."""
        if self.intersects is not None:
            return self.intersects
        if self.bbox is not None:
            return shapely.geometry.mapping(shapely.geometry.box(*self.bbox))
        return None

    def matches_cloud_cover(self, item_dict: Mapping[str, Any]) -> bool:
        """Return whether the item passes the cloud-cover maximum (unknown cover fails it)."""
        if self.max_cloud_cover is None:
            return True
        value = cloud_cover(item_dict.get("properties") or {})
        return value is not None and value <= self.max_cloud_cover

    def sort(self, item_dicts: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """Sort item dicts by ``sortby`` (stable; items lacking the field go last)."""
        items = list(item_dicts)
        if self.sortby is None:
            return items
        field, descending = self.sortby

        def key(item: Mapping[str, Any]) -> float:
            if field == "datetime":
                return item_datetime(item).timestamp()
            value = cloud_cover(item.get("properties") or {})
            return float("inf") if value is None else value

        has_field = [field == "datetime" or cloud_cover(i.get("properties") or {}) is not None for i in items]
        present = [item for item, flag in zip(items, has_field) if flag]
        missing = [item for item, flag in zip(items, has_field) if not flag]
        return sorted(present, key=key, reverse=descending) + missing


def build_parameters(
    *,
    collections: Sequence[str] | None,
    bbox: Sequence[float] | None,
    intersects: Mapping[str, Any] | None,
    datetime: str | None,
    max_cloud_cover: float | None,
    limit: int | None,
    sortby: str | None,
) -> SearchParameters:
    """Validate raw search arguments into :class:`SearchParameters`.

    Raises
    ------
    ValueError
        Naming the argument, the value and what is expected.
    """
    if isinstance(collections, str):
        collections = [collections]
    if bbox is not None and intersects is not None:
        raise ValueError("pass either bbox or intersects, not both")
    if bbox is not None:
        bbox = tuple(float(v) for v in bbox)
        if len(bbox) != 4 or not (bbox[0] <= bbox[2] and bbox[1] <= bbox[3]):
            raise ValueError(f"invalid bbox {bbox!r}; expected (west, south, east, north) in degrees with west <= east")
        if not (-180 <= bbox[0] <= 180 and -180 <= bbox[2] <= 180 and -90 <= bbox[1] <= 90 and -90 <= bbox[3] <= 90):
            raise ValueError(f"invalid bbox {bbox!r}; expected EPSG:4326 degrees (longitude -180..180, latitude -90..90)")
    if intersects is not None:
        try:
            shapely.geometry.shape(intersects)
        except Exception as error:
            raise ValueError(f"invalid intersects geometry: {error}; expected a GeoJSON geometry dict") from None
    if max_cloud_cover is not None and not 0 <= float(max_cloud_cover) <= 100:
        raise ValueError(f"invalid max_cloud_cover {max_cloud_cover!r}; expected a percentage in 0-100")
    if limit is not None and (int(limit) != limit or limit < 1):
        raise ValueError(f"invalid limit {limit!r}; expected a positive integer or None for all matches")

    sort_order = None
    if sortby is not None:
        match = _SORTBY.match(sortby.strip())
        if not match:
            raise ValueError(
                f"invalid sortby {sortby!r}; expected one of {sorted(SORTABLE_FIELDS)} with an optional +/- prefix"
            )
        sort_order = (match.group(2), match.group(1) == "-")

    return SearchParameters(
        collections=None if collections is None else tuple(collections),
        bbox=bbox,
        intersects=None if intersects is None else dict(intersects),
        datetime_range=None if datetime is None else parse_datetime_range(datetime),
        max_cloud_cover=None if max_cloud_cover is None else float(max_cloud_cover),
        limit=limit,
        sortby=sort_order,
    )


def parse_datetime_range(text: str) -> tuple[datetime | None, datetime | None]:
    """Parse a STAC datetime argument into an inclusive UTC range.

    Accepts ``"2020-01-01/2020-06-30"``, open ends (``"../2020-06-30"``),
    RFC 3339 instants, and single dates (``"2020-05-23"`` covers the whole
    UTC day). A date as range end includes that whole day.
    """
    parts = text.strip().split("/")
    if len(parts) > 2 or not text.strip():
        raise ValueError(f"invalid datetime {text!r}; expected 'START/END' or one instant (RFC 3339 or YYYY-MM-DD)")
    if len(parts) == 1:
        start, end = _parse_instant(parts[0], end_of_day=False), _parse_instant(parts[0], end_of_day=True)
        return start, end
    start = None if parts[0] in ("", "..") else _parse_instant(parts[0], end_of_day=False)
    end = None if parts[1] in ("", "..") else _parse_instant(parts[1], end_of_day=True)
    if start is None and end is None:
        raise ValueError(f"invalid datetime {text!r}; at least one end of the range must be given")
    if start is not None and end is not None and start > end:
        raise ValueError(f"invalid datetime {text!r}; the start is after the end")
    return start, end


def _parse_instant(text: str, *, end_of_day: bool) -> datetime:
    text = text.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return datetime.combine(day, time.max if end_of_day else time.min, tzinfo=timezone.utc)
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"invalid datetime {text!r}; expected RFC 3339 (2020-05-23T10:00:00Z) or YYYY-MM-DD") from None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _rfc3339(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def compile_filter(filter_json: Mapping[str, Any]) -> cql2.Expr:
    """Return the ``cql2`` expression of a CQL2-JSON filter built by :meth:`SearchParameters.full_filter`.

    Schema validation is skipped: it costs about 0.7 s per filter (cql2 0.6,
    2-core machine) and these filters are built by code, not typed by users.
    """
    return cql2.Expr(dict(filter_json))
