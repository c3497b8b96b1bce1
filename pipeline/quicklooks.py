"""Quicklook PNGs of a mosaic: the land-cover map with its legend, and the cloud layer.

The maps are drawn from the coarsest overview level that still has at least
the requested size, so a quicklook of a continent reads a few MB, not the
full-resolution layers. Pixels are resampled by nearest neighbour, so every
drawn colour is a stored class or probability. Text uses Pillow's bundled
default font. Each PNG also carries its legend as a ``legend`` text chunk
(JSON), so programs can read what the image shows.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from pipeline import layout
from pipeline.completion import completion_info, open_mosaic
from pipeline.legend import LegendEntry, legend_from_attrs

logger = logging.getLogger(__name__)

NODATA_RGB = (0, 0, 0)  # never observed
CLOUDY_RGB = (96, 64, 128)  # observed, but cloudy in every observation
BACKGROUND_RGB = (255, 255, 255)
TEXT_RGB = (0, 0, 0)
MARGIN_PX = 12
SWATCH_PX = 16
FONT_SIZE_PX = 14
LEGEND_WIDTH_PX = 220
COLORBAR_WIDTH_PX = 110

# Colour ramp of the cloud probability: (percent, RGB) stops, clear sky dark
# blue, thick cloud white.
CLOUD_RAMP: tuple[tuple[float, tuple[int, int, int]], ...] = (
    (0.0, (16, 42, 92)),
    (50.0, (98, 146, 204)),
    (100.0, (255, 255, 255)),
)


def map_size_px(shape: tuple[int, int], max_size_px: int) -> tuple[int, int]:
    """Return ``(height, width)`` of a map of a ``shape`` grid whose longer side is at most ``max_size_px``."""
    height, width = shape
    scale = min(1.0, max_size_px / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _read_layer(mosaic_url: str, layer: str, size: tuple[int, int]) -> tuple[np.ndarray, dict[str, Any]]:
    """Read ``layer`` from the coarsest level at least ``size``; resample to ``size`` by nearest neighbour."""
    levels = int(completion_info(mosaic_url).get("overview_levels", 0))
    chosen = 0
    for level in range(levels, -1, -1):
        variable = open_mosaic(mosaic_url, level=level)[layer]
        if variable.sizes["y"] >= size[0] and variable.sizes["x"] >= size[1]:
            chosen = level
            break
    variable = open_mosaic(mosaic_url, level=chosen)[layer]
    values = variable.values
    rows = np.minimum((np.arange(size[0]) + 0.5) * values.shape[0] / size[0], values.shape[0] - 1).astype(int)
    cols = np.minimum((np.arange(size[1]) + 0.5) * values.shape[1] / size[1], values.shape[1] - 1).astype(int)
    return values[np.ix_(rows, cols)], dict(variable.attrs)


def _font(size_px: int = FONT_SIZE_PX) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size_px)


def _ramp_rgb(percent: np.ndarray) -> np.ndarray:
    stops = np.array([stop for stop, _ in CLOUD_RAMP])
    colours = np.array([rgb for _, rgb in CLOUD_RAMP], dtype=np.float64)
    channels = [np.interp(percent, stops, colours[:, channel]) for channel in range(3)]
    return np.rint(np.stack(channels, axis=-1)).astype(np.uint8)


def _canvas(map_rgb: np.ndarray, panel_width: int, panel_height: int, title: str) -> tuple[Image.Image, int]:
    """Return a white canvas with the title and the map drawn, and the x of the side panel."""
    font = _font(FONT_SIZE_PX + 2)
    title_height = FONT_SIZE_PX + 2 + MARGIN_PX
    map_height, map_width = map_rgb.shape[:2]
    width = MARGIN_PX + map_width + MARGIN_PX + panel_width + MARGIN_PX
    height = MARGIN_PX + title_height + max(map_height, panel_height) + MARGIN_PX
    image = Image.new("RGB", (width, height), BACKGROUND_RGB)
    ImageDraw.Draw(image).text((MARGIN_PX, MARGIN_PX), title, fill=TEXT_RGB, font=font)
    image.paste(Image.fromarray(map_rgb, mode="RGB"), (MARGIN_PX, MARGIN_PX + title_height))
    return image, MARGIN_PX + map_width + MARGIN_PX


def _png_info(title: str, legend: Any, attribution: str | None) -> PngInfo:
    info = PngInfo()
    info.add_text("Title", title)
    info.add_text("Software", "fleximo-pipeline")
    info.add_text("legend", json.dumps(legend))
    if attribution:
        info.add_text("Copyright", attribution)
    return info


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def render_landcover(
    classes: np.ndarray, legend: tuple[LegendEntry, ...], nodata: int, observed: np.ndarray | None = None
) -> np.ndarray:
    """Colour a ``(H, W)`` class array with the legend colours; return ``(H, W, 3)`` uint8.

    Nodata pixels are drawn in :data:`CLOUDY_RGB` where ``observed`` (the
    count of valid observations) is above 0, else in :data:`NODATA_RGB`.
    """
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[:] = NODATA_RGB
    for entry in legend:
        palette[entry.id] = entry.rgb
    palette[nodata] = NODATA_RGB
    rgb = palette[classes]
    if observed is not None:
        rgb[(classes == nodata) & (observed > 0)] = CLOUDY_RGB
    return rgb


def write_landcover_quicklook(mosaic_url: str, path: Path, *, max_size_px: int = 1024, attribution: str | None = None) -> Path:
    """Draw the land-cover map with its legend to a PNG at ``path``; return the path."""
    full_shape = tuple(completion_info(mosaic_url)["shape"])
    size = map_size_px((int(full_shape[0]), int(full_shape[1])), max_size_px)
    classes, attrs = _read_layer(mosaic_url, layout.LANDCOVER_VAR, size)
    legend = legend_from_attrs(attrs)
    nodata = int(attrs.get("nodata", layout.LANDCOVER_NODATA))
    observed = None
    if layout.VALID_OBSERVATIONS_VAR in open_mosaic(mosaic_url).data_vars:
        observed, _ = _read_layer(mosaic_url, layout.VALID_OBSERVATIONS_VAR, size)

    nodata_rows = [(CLOUDY_RGB, "cloudy in every observation"), (NODATA_RGB, "not observed")]
    rows = [(entry.rgb, entry.name) for entry in legend] + nodata_rows
    row_height = SWATCH_PX + 6
    rgb = render_landcover(classes, legend, nodata, observed)
    image, panel_x = _canvas(rgb, LEGEND_WIDTH_PX, row_height * len(rows), "Land cover")
    draw = ImageDraw.Draw(image)
    font = _font()
    top = MARGIN_PX + FONT_SIZE_PX + 2 + MARGIN_PX
    for index, (rgb, name) in enumerate(rows):
        y = top + index * row_height
        draw.rectangle((panel_x, y, panel_x + SWATCH_PX - 1, y + SWATCH_PX - 1), fill=rgb, outline=TEXT_RGB)
        draw.text((panel_x + SWATCH_PX + 6, y), name, fill=TEXT_RGB, font=font)

    legend_json = [{"id": entry.id, "name": entry.name, "color": entry.color} for entry in legend]
    legend_json += [{"id": nodata, "name": name, "color": _hex(colour)} for colour, name in nodata_rows]
    image.save(path, format="PNG", pnginfo=_png_info("Land cover", legend_json, attribution))
    return path


def write_cloud_quicklook(mosaic_url: str, path: Path, *, max_size_px: int = 1024, attribution: str | None = None) -> Path:
    """Draw the composite cloud probability with a colour bar to a PNG at ``path``; return the path."""
    full_shape = tuple(completion_info(mosaic_url)["shape"])
    size = map_size_px((int(full_shape[0]), int(full_shape[1])), max_size_px)
    cloud, attrs = _read_layer(mosaic_url, layout.CLOUD_PROBABILITY_VAR, size)
    nodata = int(attrs.get("nodata", layout.PROBABILITY_FILL))
    rgb = _ramp_rgb(np.clip(cloud, 0, 100).astype(np.float64))
    rgb[cloud == nodata] = NODATA_RGB

    bar_height = min(200, max(100, size[0]))
    image, panel_x = _canvas(rgb, COLORBAR_WIDTH_PX, bar_height + 3 * SWATCH_PX, "Cloud probability (%)")
    draw = ImageDraw.Draw(image)
    font = _font()
    top = MARGIN_PX + FONT_SIZE_PX + 2 + MARGIN_PX
    bar_width = 20
    percents = np.linspace(100.0, 0.0, bar_height)
    bar = np.repeat(_ramp_rgb(percents)[:, np.newaxis, :], bar_width, axis=1)
    image.paste(Image.fromarray(bar, mode="RGB"), (panel_x, top))
    draw.rectangle((panel_x, top, panel_x + bar_width - 1, top + bar_height - 1), outline=TEXT_RGB)
    for tick in (0, 25, 50, 75, 100):
        y = top + round((100 - tick) / 100 * (bar_height - 1))
        draw.line((panel_x + bar_width, y, panel_x + bar_width + 4, y), fill=TEXT_RGB)
        draw.text((panel_x + bar_width + 8, y - FONT_SIZE_PX // 2), f"{tick}", fill=TEXT_RGB, font=font)
    swatch_y = top + bar_height + SWATCH_PX
    draw.rectangle((panel_x, swatch_y, panel_x + SWATCH_PX - 1, swatch_y + SWATCH_PX - 1), fill=NODATA_RGB, outline=TEXT_RGB)
    draw.text((panel_x + SWATCH_PX + 6, swatch_y), "not observed", fill=TEXT_RGB, font=font)

    legend_json = {
        "ramp": [{"percent": stop, "color": _hex(colour)} for stop, colour in CLOUD_RAMP],
        "nodata": {"value": nodata, "name": "not observed", "color": _hex(NODATA_RGB)},
    }
    image.save(path, format="PNG", pnginfo=_png_info("Cloud probability (%)", legend_json, attribution))
    return path


def write_quicklooks(mosaic_url: str, out_dir: str | Path, *, max_size_px: int = 1024, attribution: str | None = None) -> dict[str, Path]:
    """Write quicklook PNGs of a finished mosaic.

    Parameters
    ----------
    mosaic_url
        A complete mosaic store.
    out_dir
        Local folder for the PNGs; created if missing.
    max_size_px
        Longer side of each map in pixels (the legend panel comes on top).
    attribution
        Data attribution stored in the PNG ``Copyright`` chunk, e.g.
        ``"Contains modified Copernicus Sentinel data 2020"``.

    Returns
    -------
    dict of str to pathlib.Path
        ``"landcover_quicklook"`` and ``"cloud_probability_quicklook"``.

    Raises
    ------
    pipeline.completion.IncompleteStoreError
        If the mosaic store is not complete.
    """
    if max_size_px < 16:
        raise ValueError(f"max_size_px is {max_size_px}; expected at least 16 pixels")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {
        "landcover_quicklook": write_landcover_quicklook(
            mosaic_url, out_dir / "landcover_quicklook.png", max_size_px=max_size_px, attribution=attribution
        ),
        "cloud_probability_quicklook": write_cloud_quicklook(
            mosaic_url, out_dir / "cloud_probability_quicklook.png", max_size_px=max_size_px, attribution=attribution
        ),
    }
    logger.info("wrote quicklooks %s", ", ".join(str(path) for path in written.values()))
    return written
