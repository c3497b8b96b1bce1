"""Class legends of land-cover layers: ids, names and colours.

The mosaic stores its legend as attributes of the ``landcover`` variable:
the CF flag attributes ``flag_values`` and ``flag_meanings``, plus
``flag_colors`` (hex RGB) and ``class_names`` (names as given, with
spaces). Exports, the STAC Item and viewers read the legend back from the
store alone.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pipeline import layout

_HEX_COLOR = re.compile(r"^#?([0-9a-fA-F]{6})$")


@dataclasses.dataclass(frozen=True)
class LegendEntry:
    """One land-cover class.

    Attributes
    ----------
    id
        Class id stored in the ``landcover`` layer, 0-254 (255 is nodata).
    name
        Human-readable class name, e.g. ``"tree cover"``.
    color
        Display colour as ``"#rrggbb"``.
    """

    id: int
    name: str
    color: str

    @property
    def rgb(self) -> tuple[int, int, int]:
        """Display colour as an ``(r, g, b)`` tuple of 0-255 integers."""
        digits = self.color.lstrip("#")
        return (int(digits[0:2], 16), int(digits[2:4], 16), int(digits[4:6], 16))


def _color_to_hex(color: Any, class_id: int) -> str:
    if isinstance(color, str):
        match = _HEX_COLOR.match(color)
        if match:
            return f"#{match.group(1).lower()}"
    elif isinstance(color, Sequence) and len(color) in (3, 4):
        channels = [int(channel) for channel in color[:3]]
        if all(0 <= channel <= 255 for channel in channels):
            return "#{:02x}{:02x}{:02x}".format(*channels)
    raise ValueError(
        f"class {class_id} has colour {color!r}; expected '#rrggbb' or an (r, g, b) tuple of 0-255 integers"
    )


def _fields_of(entry: Any) -> tuple[Any, Any, Any]:
    if isinstance(entry, Mapping):
        return entry["id"], entry["name"], entry["color"]
    if isinstance(entry, tuple) and len(entry) == 3:
        return entry
    return entry.id, entry.name, entry.color


def normalize_legend(legend: Iterable[Any]) -> tuple[LegendEntry, ...]:
    """Check a legend and return it as :class:`LegendEntry` records in the given order.

    The order matters: entry ``i`` names probability plane ``i`` of a
    prediction store that has no ``class`` coordinate.

    Parameters
    ----------
    legend
        Entries with ``id``, ``name`` and ``color``: objects with those
        attributes, mappings with those keys, or ``(id, name, color)`` tuples.
        A colour is ``"#rrggbb"`` or an ``(r, g, b)`` tuple.

    Raises
    ------
    ValueError
        If the legend is empty, an id is outside 0-254 or repeated, or a
        colour cannot be read.
    """
    entries = []
    for entry in legend:
        class_id, name, color = _fields_of(entry)
        class_id = int(class_id)
        if not 0 <= class_id < layout.LANDCOVER_NODATA:
            raise ValueError(
                f"class id {class_id} ({name!r}) is outside 0-254; id 255 is reserved for nodata"
            )
        entries.append(LegendEntry(id=class_id, name=str(name), color=_color_to_hex(color, class_id)))

    if not entries:
        raise ValueError("the legend is empty; pass at least one (id, name, color) class")
    ids = [entry.id for entry in entries]
    repeated = sorted({class_id for class_id in ids if ids.count(class_id) > 1})
    if repeated:
        raise ValueError(f"the legend repeats class ids {repeated}; give each class a unique id")
    return tuple(entries)


def legend_attrs(entries: Sequence[LegendEntry]) -> dict[str, Any]:
    """Return the CF flag attributes that describe ``entries`` on a class layer."""
    return {
        "flag_values": [entry.id for entry in entries],
        "flag_meanings": " ".join(re.sub(r"\W+", "_", entry.name.strip()) for entry in entries),
        "flag_colors": [entry.color for entry in entries],
        "class_names": [entry.name for entry in entries],
    }


def legend_from_attrs(attrs: Mapping[str, Any]) -> tuple[LegendEntry, ...]:
    """Read the legend back from the attributes written by :func:`legend_attrs`.

    Raises
    ------
    ValueError
        If the attributes lack ``flag_values`` or ``flag_colors``.
    """
    missing = [key for key in ("flag_values", "flag_colors") if key not in attrs]
    if missing:
        raise ValueError(
            f"the class layer has no {', '.join(missing)} attribute; it was not written by the "
            "mosaic stage, so its legend is unknown"
        )
    names = attrs.get("class_names") or str(attrs.get("flag_meanings", "")).split()
    return tuple(
        LegendEntry(id=int(class_id), name=str(name), color=str(color))
        for class_id, name, color in zip(attrs["flag_values"], names, attrs["flag_colors"], strict=True)
    )
