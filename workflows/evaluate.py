"""Evaluate segmentation models: on chip folders, on whole scenes, or from prediction rasters.

Three entry points share one metric code path
(:mod:`workflows.training.metrics`):

* :func:`evaluate_main` runs a model card on a chip folder, or compares a
  folder of prediction GeoTIFFs with the chips' masks;
* :func:`predict_scene` and :func:`evaluate_scene` run a card over a whole
  scene in memory, tiled with the GSD-matched patch size and blended like the
  inference stage, and score it against a label raster;
* ``fleximo evaluate`` wraps :func:`evaluate_main` and writes the report as
  JSON and as a table.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch

from pipeline.model import ModelCard, load_card, load_model_from_card, precision_for_device
from pipeline.tiling import blend_window, choose_patch_size, tile_grid
from workflows.chips import CHIP_LAYOUTS, open_chips
from workflows.training.chip_dataset import ChipDataset, ChipSet
from workflows.training.chip_spec import ChipSpec
from workflows.training.distributed import DistributedContext, resolve_device
from workflows.training.loop import evaluate_model
from workflows.training.metrics import SegmentationReport, confusion_matrix, segmentation_report

logger = logging.getLogger(__name__)


def _check_classes(card: ModelCard, spec: ChipSpec) -> None:
    if len(card.classes) != spec.num_classes:
        raise ValueError(
            f"model card {card.name!r} has {len(card.classes)} classes but the chips have {spec.num_classes}; "
            "evaluate on chips labelled with the card's classes"
        )
    if [name.lower() for name in card.class_names] != [name.lower() for name in spec.class_names]:
        logger.warning("class names differ: card %s, chips %s; comparing by id", card.class_names, spec.class_names)


def evaluate_card_on_chips(
    card: ModelCard,
    chips: ChipSet,
    *,
    split: str | None = "val",
    patch_size: int | None = None,
    batch_size: int = 16,
    device: str = "auto",
    precision: str = "auto",
) -> SegmentationReport:
    """Run ``card``'s model on the chips of ``split`` and score it against their masks.

    The patch size is chosen from the card's reference and the chips' GSD
    with :func:`pipeline.tiling.choose_patch_size`, as inference does;
    ``patch_size`` overrides it.
    """
    _check_classes(card, chips.spec)
    resolved = resolve_device(device)
    context = DistributedContext(rank=0, world_size=1, local_rank=0, device=resolved)
    model = load_model_from_card(card, device=resolved)
    patch = choose_patch_size(card.reference_gsd_m, card.reference_patch_size, chips.spec.gsd_m, override=patch_size)
    dataset = ChipDataset(chips, split)  # type: ignore[arg-type]
    if len(dataset) == 0:
        raise ValueError(f"the chip set at {chips.root} has no chips in split {split!r}; counts: {chips.counts()}")
    wavelengths = list(chips.spec.wavelengths_um)
    return evaluate_model(
        model,
        dataset,
        prepare=lambda reflectance: card.prepare_input(reflectance, wavelengths),
        patch_size=patch,
        batch_size=batch_size,
        precision=precision_for_device(precision, context.device),
        context=context,
    )


def evaluate_predictions(chips: ChipSet, predictions_dir: str | Path, *, split: str | None = "val") -> SegmentationReport:
    """Score prediction GeoTIFFs (class ids, named like the chips) against the chips' masks."""
    folder = Path(predictions_dir)
    dataset = ChipDataset(chips, split, cache=False)  # type: ignore[arg-type]
    spec = chips.spec
    confusion = np.zeros((spec.num_classes, spec.num_classes), dtype=np.int64)
    for index, record in enumerate(dataset.records):
        path = next((folder / f"{record.name}{s}" for s in (".tif", ".tiff") if (folder / f"{record.name}{s}").is_file()), None)
        if path is None:
            raise FileNotFoundError(f"no prediction {record.name}.tif in {folder} for chip {record.image_path}")
        _, mask = dataset.read(index)
        with rasterio.open(path) as source:
            predicted = source.read(1)
        if predicted.shape != mask.shape:
            raise ValueError(f"prediction {path} is {predicted.shape} px but the mask is {mask.shape} px")
        confusion += confusion_matrix(mask, predicted, spec.num_classes, spec.ignore_index)
    return segmentation_report(confusion, spec.class_names, spec.positive_class)


def predict_scene(
    card: ModelCard,
    reflectance: np.ndarray,
    wavelengths_um: Sequence[float],
    gsd_m: float,
    *,
    model: torch.nn.Module | None = None,
    patch_size: int | None = None,
    min_patch: int = 4,
    overlap_fraction: float = 0.25,
    batch_size: int = 16,
    device: str = "auto",
) -> tuple[np.ndarray, int]:
    """Predict class probabilities over a whole in-memory scene.

    Parameters
    ----------
    reflectance
        ``(C, H, W)`` float reflectance (0-1); NaN marks missing pixels.
    wavelengths_um, gsd_m
        Band centre wavelengths (µm) and the scene's GSD (m).
    min_patch
        Smallest patch size accepted by :func:`pipeline.tiling.choose_patch_size`;
        lower it to match a fine-GSD model on a coarse scene.
    overlap_fraction
        Tile overlap as a fraction of the tile side; overlapping probabilities
        are blended with :func:`pipeline.tiling.blend_window`.

    Returns
    -------
    tuple
        ``(probabilities (K, H, W) float32, patch_size)``; tiles are
        ``card.token_grid * patch_size`` pixels.
    """
    resolved = resolve_device(device)
    model = model if model is not None else load_model_from_card(card, device=resolved)
    patch = choose_patch_size(card.reference_gsd_m, card.reference_patch_size, gsd_m, override=patch_size,
                              min_patch=min_patch)
    tile_px = card.token_grid * patch
    channels, height, width = reflectance.shape
    grid = tile_grid(height, width, tile_px, min(tile_px // 2, int(round(overlap_fraction * tile_px))))
    window = blend_window(tile_px, grid.overlap_px).astype(np.float64)

    padded = np.zeros((channels, grid.origins_y[-1] + tile_px, grid.origins_x[-1] + tile_px), dtype=np.float32)
    padded[:, :height, :width] = np.nan_to_num(reflectance, nan=0.0)
    sums = np.zeros((len(card.classes), *padded.shape[1:]), dtype=np.float64)
    weights = np.zeros(padded.shape[1:], dtype=np.float64)
    tiles = list(grid)
    with torch.no_grad():
        for start in range(0, len(tiles), batch_size):
            batch_tiles = tiles[start : start + batch_size]
            batch = np.stack([padded[:, t.y0 : t.y0 + tile_px, t.x0 : t.x0 + tile_px] for t in batch_tiles])
            inputs = card.prepare_input(torch.from_numpy(batch).to(resolved), list(wavelengths_um))
            logits = model(inputs, wavelengths_um=list(wavelengths_um), patch_size=patch)
            probabilities = torch.softmax(logits, dim=1).cpu().numpy()
            for tile, tile_probabilities in zip(batch_tiles, probabilities, strict=True):
                sums[:, tile.y0 : tile.y0 + tile_px, tile.x0 : tile.x0 + tile_px] += tile_probabilities * window
                weights[tile.y0 : tile.y0 + tile_px, tile.x0 : tile.x0 + tile_px] += window
    blended = (sums / weights)[:, :height, :width].astype(np.float32)
    return blended, patch


def evaluate_scene(
    card: ModelCard,
    reflectance: np.ndarray,
    label: np.ndarray,
    wavelengths_um: Sequence[float],
    gsd_m: float,
    *,
    ignore_index: int = 255,
    **predict_options: Any,
) -> tuple[SegmentationReport, np.ndarray]:
    """Predict a whole scene with :func:`predict_scene` and score it against ``label`` ``(H, W)``.

    Returns the report and the predicted class map ``(H, W)`` uint8.
    """
    if label.shape != reflectance.shape[1:]:
        raise ValueError(f"label is {label.shape} px but the scene is {reflectance.shape[1:]} px")
    probabilities, patch = predict_scene(card, reflectance, wavelengths_um, gsd_m, **predict_options)
    predicted = probabilities.argmax(axis=0).astype(np.uint8)
    positive = next((c.id for c in card.classes if c.name.lower() == "cloud"), None) if card.task == "cloud" else None
    confusion = confusion_matrix(label, predicted, len(card.classes), ignore_index)
    logger.info("scored %s on a %d x %d px scene at %.3g m with patch %d px", card.name, *label.shape, gsd_m, patch)
    return segmentation_report(confusion, card.class_names, positive), predicted


def evaluate_main(
    chips_root: str | Path,
    *,
    card: str | Path | None = None,
    predictions: str | Path | None = None,
    layout: str = "generic",
    split: str | None = "val",
    reader_options: dict[str, Any] | None = None,
    patch_size: int | None = None,
    batch_size: int = 16,
    device: str = "auto",
    precision: str = "auto",
    output: str | Path | None = None,
) -> SegmentationReport:
    """Evaluate a model card (or a folder of predictions) on a chip folder.

    Parameters
    ----------
    chips_root
        Chip folder in ``layout`` (see :func:`workflows.chips.open_chips`).
    card
        Model card YAML of the model to run; exclusive with ``predictions``.
    predictions
        Folder of prediction GeoTIFFs named like the chips.
    split
        ``"train"``, ``"val"``, ``"test"`` or ``None`` for every chip.
    output
        When given, ``<output>.json`` and ``<output>.txt`` receive the report.

    Returns
    -------
    SegmentationReport
    """
    if (card is None) == (predictions is None):
        raise ValueError("give exactly one of card (a model to run) or predictions (a folder of class rasters)")
    chips = open_chips(chips_root, layout, **(reader_options or {}))  # type: ignore[arg-type]
    if card is not None:
        report = evaluate_card_on_chips(load_card(card), chips, split=split, patch_size=patch_size,
                                        batch_size=batch_size, device=device, precision=precision)
    else:
        report = evaluate_predictions(chips, predictions, split=split)  # type: ignore[arg-type]

    if output is not None:
        stem = Path(output)
        stem.parent.mkdir(parents=True, exist_ok=True)
        stem.with_suffix(".json").write_text(report.to_json())
        stem.with_suffix(".txt").write_text(report.to_table() + "\n")
    return report


def register(cli_group: Any) -> None:
    """Add the ``evaluate`` command to the ``fleximo`` click group."""
    import click

    @cli_group.command("evaluate")
    @click.argument("chips_root", type=click.Path(exists=True, file_okay=False, path_type=Path))
    @click.option("--card", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                  help="Model card YAML of the model to evaluate.")
    @click.option("--predictions", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
                  help="Folder of prediction GeoTIFFs named like the chips, instead of --card.")
    @click.option("--layout", type=click.Choice(CHIP_LAYOUTS), default="generic", show_default=True, help="Chip folder layout.")
    @click.option("--split", type=click.Choice(["train", "val", "test", "all"]), default="val", show_default=True,
                  help="Which chips to score.")
    @click.option("--gf-sensor", type=click.Choice(["gf1", "gf2"]), default=None, help="GF12MS-WHU: which sensor's chips.")
    @click.option("--value-scale", type=float, default=None, help="GF12MS-WHU: stored value to reflectance factor.")
    @click.option("--patch-size", type=int, default=None, help="Patch size in pixels instead of the GSD-matched one.")
    @click.option("--batch-size", type=int, default=16, show_default=True, help="Chips per forward pass.")
    @click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
    @click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
                  help="Write OUTPUT.json and OUTPUT.txt with the report.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of the table.")
    def evaluate_command(chips_root: Path, card: Path | None, predictions: Path | None, layout: str, split: str,
                         gf_sensor: str | None, value_scale: float | None, patch_size: int | None, batch_size: int,
                         device: str, output: Path | None, as_json: bool) -> None:
        """Score a model (--card) or predictions (--predictions) on the chips in CHIPS_ROOT."""
        options: dict[str, Any] = {}
        if layout == "gf12ms-whu":
            if gf_sensor is None or value_scale is None:
                raise click.UsageError("the gf12ms-whu layout needs --gf-sensor and --value-scale")
            options = {"sensor": gf_sensor, "value_scale": value_scale}
        report = evaluate_main(chips_root, card=card, predictions=predictions, layout=layout,
                               split=None if split == "all" else split, reader_options=options, patch_size=patch_size,
                               batch_size=batch_size, device=device, output=output)
        click.echo(report.to_json() if as_json else report.to_table())
