"""Training chips: open chip folders in any supported layout, cut chips from scenes.

The pieces live in :mod:`workflows.training`; this module is the entry point
that the fine-tuning code, the benchmarks and the ``fleximo cut-chips``
command use.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio

from catalog.sensors import LANDSAT_OLI
from workflows.training.chip_dataset import ChipDataset, ChipRecord, ChipSet, read_generic_chips
from workflows.training.chip_spec import ChipClass, ChipSpec, load_chip_spec, write_chip_spec
from workflows.training.cutter import cut_chips, split_by_position
from workflows.training.landsat_qa import cloud_label_from_qa
from workflows.training.layouts import read_gf12ms_whu, read_segmunich

__all__ = [
    "ChipClass",
    "ChipDataset",
    "ChipLayout",
    "ChipRecord",
    "ChipSet",
    "ChipSpec",
    "LANDSAT8_OLI_BANDS",
    "cut_chips",
    "cut_chips_from_files",
    "cut_landsat8_cloud_chips",
    "load_chip_spec",
    "open_chips",
    "read_scene_bands",
    "register",
    "split_by_position",
    "write_chip_spec",
]

logger = logging.getLogger(__name__)

ChipLayout = Literal["generic", "segmunich", "gf12ms-whu"]
CHIP_LAYOUTS: tuple[str, ...] = ("generic", "segmunich", "gf12ms-whu")

# Landsat 8 OLI reflective bands of the demo cloud model, with their centre
# wavelengths (µm) from the catalog's sensor table. Level-1 DNs convert to
# TOA reflectance (without the sun elevation correction) as DN * 2e-5 - 0.1,
# the REFLECTANCE_MULT/ADD values that USGS writes into every Landsat 8 MTL
# file.
LANDSAT8_OLI_BANDS: tuple[tuple[str, float], ...] = tuple(
    (name, float(LANDSAT_OLI.find_band(name).wavelength_um))  # type: ignore[union-attr, arg-type]
    for name in ("B1", "B2", "B3", "B4", "B5", "B6", "B7")
)
LANDSAT8_REFLECTANCE_MULT = 2.0e-5
LANDSAT8_REFLECTANCE_ADD = -0.1

CLOUD_CLASSES = (ChipClass(id=0, name="clear", color="#4c9a4c"), ChipClass(id=1, name="cloud", color="#ffffff"))


def open_chips(
    root: str | Path,
    layout: ChipLayout = "generic",
    *,
    val_block_m: float | None = None,
    val_fraction: float = 0.2,
    **reader_options: Any,
) -> ChipSet:
    """Open a chip folder.

    Parameters
    ----------
    root
        The folder.
    layout
        ``"generic"`` (``chips.yaml`` + ``images/`` + ``masks/``),
        ``"segmunich"`` or ``"gf12ms-whu"``.
    val_block_m
        When given, chips are reassigned to train/val by the block of this
        size (metres) their centre falls in; for folders without a split.
    val_fraction
        Fraction of blocks held out when ``val_block_m`` is given.
    reader_options
        Passed to the layout's reader (``sensor`` and ``value_scale`` for
        GF12MS-WHU).
    """
    if layout == "generic":
        chips = read_generic_chips(root, **reader_options)
    elif layout == "segmunich":
        chips = read_segmunich(root, **reader_options)
    elif layout == "gf12ms-whu":
        chips = read_gf12ms_whu(root, **reader_options)
    else:
        raise ValueError(f"unknown chip layout {layout!r}; expected one of {CHIP_LAYOUTS}")

    if val_block_m is not None:
        chips = split_by_position(chips, val_block_m, val_fraction)
    logger.info("opened %s chips at %s: %s", layout, root, chips.counts())
    return chips


def read_scene_bands(paths: Sequence[str | Path]) -> tuple[np.ndarray, rasterio.Affine, rasterio.crs.CRS | None]:
    """Read single-band GeoTIFFs on one grid into a ``(C, H, W)`` array.

    Raises
    ------
    ValueError
        If the files are not on the same grid (shape, transform and CRS).
    """
    if not paths:
        raise ValueError("no band files given")
    arrays = []
    grid = None
    for path in paths:
        with rasterio.open(path) as source:
            this_grid = (source.shape, source.transform, source.crs)
            if grid is not None and this_grid != grid:
                raise ValueError(
                    f"{path} is on grid {this_grid[0]} px, {this_grid[1]!r}, {this_grid[2]} but {paths[0]} is on "
                    f"{grid[0]} px, {grid[1]!r}, {grid[2]}; resample the bands to one grid first"
                )
            grid = this_grid
            arrays.append(source.read(1))
    assert grid is not None
    return np.stack(arrays), grid[1], grid[2]


def cut_chips_from_files(
    band_paths: Sequence[str | Path],
    label_path: str | Path,
    out_dir: str | Path,
    spec: ChipSpec,
    *,
    chip_size: int,
    stride: int | None = None,
    block_size: int | None = None,
    val_fraction: float = 0.2,
) -> ChipSet:
    """Cut chips from band GeoTIFFs and a label GeoTIFF on the same grid.

    See :func:`workflows.training.cutter.cut_chips` for the split and layout.
    """
    image, transform, crs = read_scene_bands(band_paths)
    label, label_transform, label_crs = read_scene_bands([label_path])
    if label.shape[1:] != image.shape[1:] or label_transform != transform or label_crs != crs:
        raise ValueError(
            f"label {label_path} is not on the grid of the bands ({image.shape[1:]} px, {transform!r}); "
            "resample it with nearest neighbour first"
        )
    return cut_chips(
        image, label[0], out_dir, spec, transform=transform, crs=crs, chip_size=chip_size,
        stride=stride, block_size=block_size, val_fraction=val_fraction,
    )


def cut_landsat8_cloud_chips(
    scene_dir: str | Path,
    out_dir: str | Path,
    *,
    chip_size: int = 64,
    stride: int | None = None,
    block_size: int = 192,
    val_fraction: float = 0.25,
    min_confidence: Literal["low", "medium", "high"] = "high",
    file_pattern: str = "l8_{band}.tif",
) -> ChipSet:
    """Cut clear/cloud chips from a Landsat 8 Level-1 scene and its BQA band.

    Parameters
    ----------
    scene_dir
        Folder with one GeoTIFF per band, named by ``file_pattern``.
    min_confidence
        Lowest BQA cloud confidence that counts as cloud.
    file_pattern
        File name of a band, with ``{band}`` for ``B1`` … ``B7`` and ``BQA``.
    """
    folder = Path(scene_dir)
    band_paths = [folder / file_pattern.format(band=name) for name, _ in LANDSAT8_OLI_BANDS]
    qa_path = folder / file_pattern.format(band="BQA")
    for path in [*band_paths, qa_path]:
        if not path.is_file():
            raise FileNotFoundError(f"Landsat 8 band file {path} not found (file_pattern {file_pattern!r})")

    image, transform, crs = read_scene_bands(band_paths)
    qa, qa_transform, _ = read_scene_bands([qa_path])
    if qa.shape[1:] != image.shape[1:] or qa_transform != transform:
        raise ValueError(f"BQA band {qa_path} is not on the grid of the reflective bands")
    label = cloud_label_from_qa(qa[0], min_confidence=min_confidence)

    spec = ChipSpec(
        name="landsat8-bqa-cloud",
        task="cloud",
        bands=tuple(name for name, _ in LANDSAT8_OLI_BANDS),
        wavelengths_um=tuple(wavelength for _, wavelength in LANDSAT8_OLI_BANDS),
        gsd_m=abs(transform.a),
        value_scale=LANDSAT8_REFLECTANCE_MULT,
        value_offset=LANDSAT8_REFLECTANCE_ADD,
        nodata=0,
        classes=CLOUD_CLASSES,
    )
    return cut_chips(
        image, label, out_dir, spec, transform=transform, crs=crs, chip_size=chip_size,
        stride=stride, block_size=block_size, val_fraction=val_fraction, prefix="l8",
    )


def register(cli_group: Any) -> None:
    """Add the ``cut-chips`` command to the ``fleximo`` click group."""
    import click

    @cli_group.command("cut-chips")
    @click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
    @click.option("--landsat8", "landsat8_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
                  default=None, help="Landsat 8 scene folder (l8_B1.tif … l8_B7.tif, l8_BQA.tif): label from the BQA cloud bits.")
    @click.option("--band", "band_paths", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
                  help="Band GeoTIFF, in model order; repeat for each band.")
    @click.option("--label", "label_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                  help="Label GeoTIFF on the bands' grid (class ids).")
    @click.option("--spec", "spec_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                  help="chips.yaml describing --band files (wavelengths, scaling, classes).")
    @click.option("--chip-size", type=int, default=64, show_default=True, help="Chip side, pixels.")
    @click.option("--stride", type=int, default=None, help="Step between chips, pixels (default: chip size).")
    @click.option("--block-size", type=int, default=192, show_default=True, help="Side of the split blocks, pixels.")
    @click.option("--val-fraction", type=float, default=0.25, show_default=True, help="Fraction of blocks held out for validation.")
    def cut_chips_command(out_dir: Path, landsat8_dir: Path | None, band_paths: tuple[Path, ...], label_path: Path | None,
                          spec_path: Path | None, chip_size: int, stride: int | None, block_size: int, val_fraction: float) -> None:
        """Cut training chips and masks from a scene into OUT_DIR, split by scene blocks."""
        if landsat8_dir is not None:
            chips = cut_landsat8_cloud_chips(landsat8_dir, out_dir, chip_size=chip_size, stride=stride,
                                             block_size=block_size, val_fraction=val_fraction)
        else:
            if not band_paths or label_path is None or spec_path is None:
                raise click.UsageError("give --landsat8 DIR, or --band (repeated), --label and --spec")
            chips = cut_chips_from_files(band_paths, label_path, out_dir, load_chip_spec(spec_path), chip_size=chip_size,
                                         stride=stride, block_size=block_size, val_fraction=val_fraction)
        counts = chips.counts()
        click.echo(f"wrote {len(chips.records)} chips to {out_dir}: {counts['train']} train, {counts['val']} val")
