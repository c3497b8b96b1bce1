"""Tests of land-cover legends: input forms, checks and the attribute round trip."""

from __future__ import annotations

import dataclasses

import pytest

from pipeline.legend import LegendEntry, legend_attrs, legend_from_attrs, normalize_legend


@dataclasses.dataclass(frozen=True)
class ClassInfo:
    id: int
    name: str
    color: str


def test_normalize_legend_accepts_three_forms() -> None:
    legend = normalize_legend([
        ClassInfo(2, "cropland", "#FFFF99"),
        {"id": 0, "name": "water", "color": (31, 120, 180)},
        (1, "tree cover", "33a02c"),
    ])
    assert legend == (
        LegendEntry(2, "cropland", "#ffff99"),
        LegendEntry(0, "water", "#1f78b4"),
        LegendEntry(1, "tree cover", "#33a02c"),
    )
    assert legend[1].rgb == (31, 120, 180)


@pytest.mark.parametrize(
    ("legend", "message"),
    [
        ([], "the legend is empty"),
        ([(255, "nodata", "#000000")], "class id 255 .* is outside 0-254"),
        ([(0, "a", "#000000"), (0, "b", "#ffffff")], "repeats class ids \\[0\\]"),
        ([(0, "water", "blue")], "class 0 has colour 'blue'; expected '#rrggbb'"),
        ([(0, "water", (0, 0, 300))], "class 0 has colour \\(0, 0, 300\\)"),
    ],
)
def test_normalize_legend_rejects_bad_entries(legend: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        normalize_legend(legend)


def test_legend_attrs_round_trip() -> None:
    legend = normalize_legend([(0, "water", "#1f78b4"), (5, "bare / sparse", "#b4b4b4")])
    attrs = legend_attrs(legend)
    assert attrs["flag_values"] == [0, 5]
    assert attrs["flag_meanings"] == "water bare_sparse"
    assert attrs["flag_colors"] == ["#1f78b4", "#b4b4b4"]
    assert legend_from_attrs(attrs) == legend


def test_legend_from_attrs_rejects_missing_flags() -> None:
    with pytest.raises(ValueError, match="has no flag_colors attribute"):
        legend_from_attrs({"flag_values": [0, 1]})
