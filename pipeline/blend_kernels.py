"""Compiled loops of the block tasks: blending tile logits and turning blend sums into outputs.

The same arithmetic in numpy or torch takes one pass over the data per
operation (shift, clamp, scale, round, cast, weight, add). These loops make
one pass per step over rows that stay in cache, which makes blending about
three times faster. numba compiles them on first use and caches them on disk.
They release the GIL, so a worker's other threads keep running.

The exponential is left to numpy, whose vectorized ``exp`` is about five times
faster than a compiled scalar loop. :func:`shift_by_top` runs before it and
:func:`softmax_outputs` after it.
"""

from __future__ import annotations

import logging

import numba
import numpy as np

logger = logging.getLogger(__name__)


def compile_loop(function):
    """Compile ``function`` with numba, cached on disk where a cache folder is writable.

    numba caches in ``NUMBA_CACHE_DIR`` where set, else next to the module or
    in the user's cache folder. Where none is writable, as in a container with
    a read-only file system, it rejects ``cache=True``, and the loop is then
    compiled in each process instead.
    """
    try:
        return numba.njit(cache=True, nogil=True, error_model="numpy")(function)
    except RuntimeError:
        logger.info("no writable numba cache folder for %s, so it is compiled in each process", function.__name__)
        return numba.njit(nogil=True, error_model="numpy")(function)


@compile_loop
def cut_tile(data, nodata, row0, col0, height, width, gain, mean, std, out):  # pragma: no cover
    """Write ``(data[:, row0:row0 + height, col0:col0 + width] * gain - mean) / std`` as float32 into ``out``.

    ``data`` is integer ``(band, y, x)``, ``nodata`` bool ``(y, x)`` and
    ``gain``, ``mean`` and ``std`` float32 with one value per band. Nodata
    pixels count as 0. Each step is rounded to float32 as in numpy or torch.
    Where the region is smaller than ``out`` (band, tile, tile), the rest is
    filled by mirroring it, as ``np.pad(..., mode="symmetric")`` does.
    """
    zero = np.float32(0.0)
    for band in range(data.shape[0]):
        scale, offset, divisor = gain[band], mean[band], std[band]
        standardise = offset != zero or divisor != np.float32(1.0)
        for y in range(height):
            source = data[band, row0 + y, col0: col0 + width]
            invalid = nodata[row0 + y, col0: col0 + width]
            target = out[band, y, :width]
            if standardise:
                for x in range(width):
                    value = zero if invalid[x] else np.float32(source[x])
                    target[x] = (value * scale - offset) / divisor
            else:
                for x in range(width):
                    target[x] = zero if invalid[x] else np.float32(source[x]) * scale
    _mirror_pad(out, height, width)


@compile_loop
def _mirrored(index, size):  # pragma: no cover
    """Return the position that ``index`` (>= 0) takes in a symmetric padding of ``size`` values."""
    position = index % (2 * size)
    return position if position < size else 2 * size - 1 - position


@compile_loop
def _mirror_pad(out, height, width):  # pragma: no cover
    """Fill ``out[:, height:, :]`` and ``out[:, :, width:]`` by mirroring ``out[:, :height, :width]``."""
    rows, cols = out.shape[1], out.shape[2]
    if height == rows and width == cols:
        return
    for band in range(out.shape[0]):
        for y in range(height):
            row = out[band, y]
            for x in range(width, cols):
                row[x] = row[_mirrored(x, width)]
        for y in range(height, rows):
            out[band, y, :] = out[band, _mirrored(y, height), :]


BLEND_OK = 0
BLEND_NAN = 1
"""Status of :func:`blend_tile`: a logit is NaN."""
BLEND_TOP_NOT_FINITE = 2
"""Status of :func:`blend_tile`: a pixel's largest logit is infinite."""


@compile_loop
def _blend_row(logits, y, weights, top, logit_sum, weight_sum, target_row, col0, width, added, low, high,
               step):  # pragma: no cover
    """Blend row ``y`` of C-contiguous ``(classes, rows, tile)`` logits into row ``target_row`` of the sums.

    The first ``added`` columns are added to the sums, the others are stored
    over values that no tile has written yet.
    """
    classes = logits.shape[0]
    # Loops run over 1-D row views, which LLVM vectorizes. Indexing the 3-D
    # arrays inside the innermost loop instead is four times slower.
    if classes > 1:
        nans = 0
        for c in range(classes):
            row = logits[c, y, :width]
            if c == 0:
                top[:width] = row
            for x in range(width):
                nans += np.isnan(row[x])
                top[x] = max(top[x], row[x])
        if nans:
            return BLEND_NAN
        infinite = 0
        for x in range(width):
            infinite += np.isinf(top[x])
        if infinite:
            return BLEND_TOP_NOT_FINITE
        for c in range(classes):
            row = logits[c, y, :width]
            sums = logit_sum[c, target_row, col0: col0 + width]
            for x in range(added):
                shifted = max(row[x] - top[x], low)
                sums[x] += np.int32(np.rint(shifted * step)) * weights[x]
            # The stores loop over slices that start at 0, because LLVM did not
            # vectorize a loop from ``added`` to ``width`` (2.7 times slower).
            new_sums, new_row, new_top, new_weights = sums[added:], row[added:], top[added:width], weights[added:]
            for x in range(width - added):
                shifted = max(new_row[x] - new_top[x], low)
                new_sums[x] = np.int32(np.rint(shifted * step)) * new_weights[x]
    else:
        row = logits[0, y, :width]
        nans = 0
        for x in range(width):
            nans += np.isnan(row[x])
        if nans:
            return BLEND_NAN
        sums = logit_sum[0, target_row, col0: col0 + width]
        for x in range(added):
            sums[x] += np.int32(np.rint(min(max(row[x], low), high) * step)) * weights[x]
        new_sums, new_row, new_weights = sums[added:], row[added:], weights[added:]
        for x in range(width - added):
            new_sums[x] = np.int32(np.rint(min(max(new_row[x], low), high) * step)) * new_weights[x]
    weight_row = weight_sum[target_row, col0: col0 + width]
    for x in range(added):
        weight_row[x] += weights[x]
    weight_row[added:] = weights[added:]
    return BLEND_OK


@compile_loop
def _written_columns(logit_sum, weight_sum, written, target_row, col0, width):  # pragma: no cover
    """Return how many of the tile's columns in ``target_row`` add to earlier sums, and update ``written``.

    ``written[row]`` counts the columns at the start of each row of the sums
    that contain values. Tiles add to those and store further right. A gap
    left of ``col0``, where every tile was skipped as nodata, is set to zero.
    """
    start = written[target_row]
    if col0 > start:
        logit_sum[:, target_row, start:col0] = 0
        weight_sum[target_row, start:col0] = 0
        start = col0
    written[target_row] = max(start, col0 + width)
    return min(start, col0 + width) - col0


@compile_loop
def zero_unwritten(logit_sum, weight_sum, written):  # pragma: no cover
    """Set the sums right of ``written[row]`` in each row to zero, and mark every column written."""
    width = weight_sum.shape[1]
    for row in range(weight_sum.shape[0]):
        start = written[row]
        if start < width:
            logit_sum[:, row, start:] = 0
            weight_sum[row, start:] = 0
            written[row] = width


@compile_loop
def blend_tile(logits, window, logit_sum, weight_sum, written, row0, col0, height, width, limit,
               scale):  # pragma: no cover
    """Quantize one tile's logits and add them, weighted, into the blend sums.

    Parameters
    ----------
    logits
        float32 ``(classes, tile, tile)``, C-contiguous, read only.
    window
        int32 blend weights ``(tile, tile)``.
    logit_sum, weight_sum
        int32 ``(classes, H, W)`` and ``(H, W)`` sums, updated in place.
    written
        Columns at the start of each row of the sums that contain values, updated
        in place. Further right the sums are undefined until a tile writes
        them or :func:`zero_unwritten` runs, so the sums need no zeroing first.
    row0, col0
        Position of the tile's first pixel in the sums.
    height, width
        Rows and columns of the tile that are added (the rest lies past the scene).
    limit, scale
        Clamp and quantization scale, see :class:`pipeline.blocks.BlendAccumulator`.

    Returns
    -------
    int
        ``BLEND_OK``, ``BLEND_NAN`` or ``BLEND_TOP_NOT_FINITE``; on an error
        status the sums are partly updated and must be dropped.
    """
    top = np.empty(width, dtype=np.float32)
    low, high, step = np.float32(-limit), np.float32(limit), np.float32(scale)
    for y in range(height):
        added = _written_columns(logit_sum, weight_sum, written, row0 + y, col0, width)
        status = _blend_row(logits, y, window[y, :width], top, logit_sum, weight_sum, row0 + y, col0, width,
                            added, low, high, step)
        if status != BLEND_OK:
            return status
    return BLEND_OK


@compile_loop
def blend_tile_channels_last(logits, window, logit_sum, weight_sum, written, row0, col0, height, width, limit,
                             scale):  # pragma: no cover
    """Do what :func:`blend_tile` does for logits stored channels last: C-contiguous ``(tile, tile, classes)``.

    Models that end in a pixel shuffle return such logits. Each tile row is
    transposed into a small buffer that stays in cache. For a 10-class
    256 px tile on the 2-vCPU test VM this took 0.48 ms, and a copy of the
    tile to ``(classes, tile, tile)`` order followed by :func:`blend_tile`
    took 0.65 ms.
    """
    classes = logits.shape[2]
    rows = np.empty((classes, 1, width), dtype=np.float32)
    top = np.empty(width, dtype=np.float32)
    low, high, step = np.float32(-limit), np.float32(limit), np.float32(scale)
    for y in range(height):
        pixels = logits[y]
        for c in range(classes):
            row = rows[c, 0]
            for x in range(width):
                row[x] = pixels[x, c]
        added = _written_columns(logit_sum, weight_sum, written, row0 + y, col0, width)
        status = _blend_row(rows, 0, window[y, :width], top, logit_sum, weight_sum, row0 + y, col0, width,
                            added, low, high, step)
        if status != BLEND_OK:
            return status
    return BLEND_OK


@compile_loop
def shift_by_top(logit_sum, weight_sum, scale, shifted, labels, row0=0):  # pragma: no cover
    """Turn blend sums into blended logits minus each pixel's largest, and find that class.

    ``shifted[c] = logit_sum[c] / (weight_sum * scale) - top`` in float32,
    the quotient computed in float64 as a product with the reciprocal of
    ``weight_sum * scale``. Its error is far below float32's resolution, so a
    quotient that float32 represents exactly, as where every tile gave the
    same quantized logit, comes out exact. ``labels`` gets the first class
    whose blended logit is the largest. A zero weight sum divides by ``scale``.

    Parameters
    ----------
    logit_sum
        int32 ``(classes, H, W)``.
    weight_sum
        int32 ``(H, W)``.
    scale
        The quantization scale of the sums.
    shifted
        float32 ``(classes, n, W)``, written: rows ``row0`` to ``row0 + n`` of the sums.
    labels
        uint8 ``(H, W)``, those rows written.
    row0
        First row of the sums that ``shifted`` covers.
    """
    classes, height, width = shifted.shape
    top = np.empty(width, dtype=np.float32)
    reciprocal = np.empty(width, dtype=np.float64)
    for y in range(height):
        weights = weight_sum[row0 + y]
        label_row = labels[row0 + y]
        for x in range(width):
            reciprocal[x] = 1.0 / (np.float64(scale) * (weights[x] if weights[x] != 0 else 1))
        for c in range(classes):
            sums = logit_sum[c, row0 + y]
            out = shifted[c, y]
            for x in range(width):
                out[x] = np.float32(sums[x] * reciprocal[x])
        top[:] = shifted[0, y]
        label_row[:] = 0
        for c in range(1, classes):
            out = shifted[c, y]
            for x in range(width):
                if out[x] > top[x]:
                    top[x] = out[x]
                    label_row[x] = c
        for c in range(classes):
            out = shifted[c, y]
            for x in range(width):
                out[x] -= top[x]


@compile_loop
def _sum_classes(exponentials, y, total):  # pragma: no cover
    """Write the float32 sum over classes of row ``y`` of ``exponentials``, in class order, into ``total``."""
    total[:] = exponentials[0, y]
    for c in range(1, exponentials.shape[0]):
        row = exponentials[c, y]
        for x in range(total.size):
            total[x] += row[x]


@compile_loop
def softmax_outputs(exponentials, nodata, fill, probability_scale, probabilities, labels, confidence,
                    row0=0):  # pragma: no cover
    """Turn the exponentials of shifted logits into uint8 class probabilities and a confidence.

    Per pixel, with ``sum`` the float32 sum of the exponentials in class order
    and ``inverse = 1 / sum``: ``probabilities[c] = rint(exp[c] * inverse *
    probability_scale)`` and ``confidence = rint(inverse * 100)``, the
    largest class's probability in percent (its exponential is 1). Nodata
    pixels get ``fill`` in every output, ``labels`` included.

    Parameters
    ----------
    exponentials
        float32 ``(classes, n, W)``, the output of :func:`shift_by_top` after
        ``np.exp``, for rows ``row0`` to ``row0 + n`` of the outputs.
    nodata
        bool ``(H, W)``.
    fill
        Value of nodata pixels.
    probability_scale
        Value of a probability of 1.
    probabilities
        uint8 ``(classes, H, W)``, those rows written.
    labels
        uint8 ``(H, W)`` from :func:`shift_by_top`, nodata set to ``fill``.
    confidence
        uint8 ``(H, W)``, those rows written.
    row0
        First output row that ``exponentials`` covers.
    """
    classes, height, width = exponentials.shape
    inverse = np.empty(width, dtype=np.float32)
    scale = np.float32(probability_scale)
    for y in range(height):
        invalid = nodata[row0 + y]
        _sum_classes(exponentials, y, inverse)
        for x in range(width):
            inverse[x] = np.float32(1.0) / inverse[x]
        for c in range(classes):
            row = exponentials[c, y]
            out = probabilities[c, row0 + y]
            for x in range(width):
                out[x] = fill if invalid[x] else np.uint8(np.rint(row[x] * inverse[x] * scale))
        _confidence_row(inverse, invalid, fill, labels[row0 + y], confidence[row0 + y])


@compile_loop
def _confidence_row(inverse, invalid, fill, label_row, confidence_row):  # pragma: no cover
    """Write one row's confidence ``rint(inverse * 100)``, and ``fill`` in both rows where ``invalid``."""
    for x in range(inverse.size):
        if invalid[x]:
            label_row[x] = fill
            confidence_row[x] = fill
        else:
            confidence_row[x] = np.uint8(np.rint(inverse[x] * np.float32(100.0)))


@compile_loop
def label_confidence(exponentials, nodata, fill, labels, confidence, row0=0):  # pragma: no cover
    """Write the confidence of :func:`softmax_outputs` and set nodata labels, without the class probabilities.

    The confidence is the same bytes as there: ``rint(100 / sum)`` with the
    float32 sum of the exponentials in class order. Rows and ``row0`` are as
    for :func:`softmax_outputs`.
    """
    _, height, width = exponentials.shape
    inverse = np.empty(width, dtype=np.float32)
    for y in range(height):
        _sum_classes(exponentials, y, inverse)
        for x in range(width):
            inverse[x] = np.float32(1.0) / inverse[x]
        _confidence_row(inverse, nodata[row0 + y], fill, labels[row0 + y], confidence[row0 + y])


@compile_loop
def class_percent(exponentials, nodata, index, fill, percent, row0=0):  # pragma: no cover
    """Write one class's softmax probability in percent (uint8), ``fill`` on nodata pixels.

    ``exponentials`` is float32 ``(classes, n, W)``, and ``row0`` its first
    output row, as for :func:`softmax_outputs`.
    """
    _, height, width = exponentials.shape
    total = np.empty(width, dtype=np.float32)
    for y in range(height):
        invalid = nodata[row0 + y]
        _sum_classes(exponentials, y, total)
        row = exponentials[index, y]
        out = percent[row0 + y]
        for x in range(width):
            probability = row[x] * (np.float32(1.0) / total[x])
            out[x] = fill if invalid[x] else np.uint8(np.rint(probability * np.float32(100.0)))
