"""Starting weights of a fine-tuning run, and the model card written for its result.

A run starts from scratch (a preset with seeded weights), from a DOFA
backbone (a fresh dense head is attached) or from an earlier FlexiMo model.
An earlier model keeps its head, and only its last classifier layer is
replaced when the class count changes. The card of the result records what inference needs to use
it the way it was trained: bands, input scaling, and the GSD and patch size
of the training chips.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from pydantic import TypeAdapter

from pipeline.model import (
    ArchitectureSpec,
    ClassInfo,
    FlexiMo,
    ModelCard,
    ModelConfig,
    build_model,
    infer_config,
    initialize_weights,
    load_card,
    preset_config,
    read_state_dict,
)
from pipeline.model.checkpoint import detect_head, load_state_into
from pipeline.model.scaling import BandStats, InputScaling, ReflectanceScaling
from workflows.training.chip_dataset import ChipDataset
from workflows.training.chip_spec import ChipSpec
from workflows.training.config import InitSpec

logger = logging.getLogger(__name__)

DEFAULT_REFERENCE_PATCH_SIZE = 16
_CLASSIFIER_PREFIXES = ("fc_norm.", "head.")
_LAST_LAYER_PREFIX = "cls_seg."


@dataclasses.dataclass
class InitialModel:
    """The model to train and the facts its new card inherits.

    ``base_card`` is the card of the starting checkpoint, if any.
    ``reference_gsd_m`` and ``reference_patch_size`` choose the training patch
    size for the chips' GSD in the same way as inference does for a scene.
    """

    model: FlexiMo
    base_card: ModelCard | None
    reference_gsd_m: float
    reference_patch_size: int
    input_scaling: Any | None
    fresh_parameters: tuple[str, ...]


def reflectance_statistics(dataset: ChipDataset, max_chips: int = 512) -> ReflectanceScaling:
    """Per-band mean and standard deviation of the chips' labelled pixels, as a card's input scaling.

    Used for models trained from scratch. At most ``max_chips`` chips, evenly
    spaced through the dataset, are read.
    """
    spec = dataset.spec
    step = max(1, len(dataset) // max_chips)
    sums = np.zeros(len(spec.wavelengths_um))
    squares = np.zeros(len(spec.wavelengths_um))
    count = 0
    for index in range(0, len(dataset), step):
        reflectance, mask = dataset.read(index)
        valid = reflectance[:, mask != spec.ignore_index].astype(np.float64)
        sums += valid.sum(axis=1)
        squares += (valid**2).sum(axis=1)
        count += valid.shape[1]
    if count == 0:
        raise ValueError("the training chips have no labelled pixels to compute input statistics from")
    mean = sums / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 1e-12))
    return ReflectanceScaling(
        bands=[
            BandStats(wavelength_um=w, mean=round(float(m), 6), std=round(float(max(s, 1e-4)), 6))
            for w, m, s in zip(spec.wavelengths_um, mean, std, strict=True)
        ]
    )


def _scaling_from(value: dict[str, Any] | None, fallback: Any) -> Any:
    if value is None:
        return fallback
    return TypeAdapter(InputScaling).validate_python(value)


def build_initial_model(init: InitSpec, chips: ChipSpec) -> InitialModel:
    """Create the model a run starts from, with an upernet head of ``chips.num_classes`` classes.

    Raises
    ------
    FileNotFoundError
        If the checkpoint or card does not exist.
    pipeline.model.CheckpointError
        If the checkpoint is not a DOFA / FlexiMo state dict.
    """
    num_classes = chips.num_classes
    if init.source == "scratch":
        config = preset_config(init.preset or "tiny_upernet", head="upernet", num_classes=num_classes)
        if init.architecture:
            config = config.replace(**init.architecture)
        model = build_model(config, seed=init.seed)
        scaling = _scaling_from(init.input_scaling, None)
        return InitialModel(
            model=model,
            base_card=None,
            reference_gsd_m=init.reference_gsd_m or chips.gsd_m,
            reference_patch_size=init.reference_patch_size or DEFAULT_REFERENCE_PATCH_SIZE,
            input_scaling=scaling,
            fresh_parameters=("all",),
        )

    base_card = load_card(init.card) if init.card is not None else None
    checkpoint = init.checkpoint or (base_card.weights_path() if base_card else None)
    if checkpoint is None:
        raise ValueError(f"model card {init.card} has seeded-random weights; start from scratch instead")
    if base_card is None and Path(checkpoint).with_suffix(".yaml").is_file():
        base_card = load_card(Path(checkpoint).with_suffix(".yaml"))
    model, fresh = _load_with_head(Path(checkpoint), num_classes, base_card, init.seed)

    if base_card is None and init.input_scaling is None:
        raise ValueError(
            f"checkpoint {checkpoint} has no model card, so its input scaling is unknown; set init.input_scaling "
            "(e.g. {kind: dofa-8bit, bands: [...]} for the public DOFA weights) or give init.card"
        )
    scaling = _scaling_from(init.input_scaling, base_card.input_scaling if base_card else None)
    return InitialModel(
        model=model,
        base_card=base_card,
        reference_gsd_m=init.reference_gsd_m or (base_card.reference_gsd_m if base_card else chips.gsd_m),
        reference_patch_size=init.reference_patch_size
        or (base_card.reference_patch_size if base_card else DEFAULT_REFERENCE_PATCH_SIZE),
        input_scaling=scaling,
        fresh_parameters=fresh,
    )


def _load_with_head(
    path: Path, num_classes: int, card: ModelCard | None, seed: int
) -> tuple[FlexiMo, tuple[str, ...]]:
    """Load a checkpoint into an upernet model, replacing what cannot be kept.

    A classifier head is dropped, a missing dense head is created, and a
    dense head with another class count keeps everything but ``cls_seg``.
    Returns the model and the names of the freshly initialised parameters.
    """
    state = read_state_dict(path)
    num_heads = card.to_model_config().num_heads if card is not None else None
    stored_head = detect_head(state)

    dropped = [key for key in state if key.startswith(_CLASSIFIER_PREFIXES)]
    if stored_head == "upernet" and state["cls_seg.0.weight"].shape[0] != num_classes:
        dropped += [key for key in state if key.startswith(_LAST_LAYER_PREFIX)]
    retained = {key: value for key, value in state.items() if key not in dropped}

    config = infer_config(state, num_heads=num_heads, head="upernet", num_classes=num_classes)
    model = FlexiMo(config)
    initialize_weights(model, seed=seed)
    if stored_head == "upernet":
        missing, unexpected = model.load_state_dict(retained, strict=False)
        missing = [key for key in missing if not key.endswith("num_batches_tracked")]
        if unexpected or any(not key.startswith(f"dense_head.{_LAST_LAYER_PREFIX}") for key in missing):
            raise ValueError(
                f"checkpoint {path} does not match the model it describes: missing {missing}, unexpected {unexpected}"
            )
        fresh = tuple(missing)
    else:
        fresh = tuple(load_state_into(model, retained, allow_new_head=True, source=f"checkpoint {path}"))

    if dropped:
        logger.info("dropped %d tensors of the checkpoint's head (%s ...)", len(dropped), dropped[0])
    if fresh:
        logger.info("initialised %d new head tensors for %d classes (seed %d)", len(fresh), num_classes, seed)
    return model, fresh


def architecture_of(config: ModelConfig) -> ArchitectureSpec:
    """Describe ``config`` as a card's explicit architecture.

    Raises
    ------
    ValueError
        If ``config`` differs from the presets in a field that a card cannot
        record, so that no card ever describes another model than its weights.
    """
    recordable = set(ArchitectureSpec.model_fields) - {"preset"}
    defaults = ModelConfig(embed_dim=64, depth=1, num_heads=1, num_classes=1)
    for field in dataclasses.fields(ModelConfig):
        name = field.name
        if name in recordable or name in ("num_classes", "head"):
            continue
        if getattr(config, name) != getattr(defaults, name):
            raise ValueError(
                f"the model has {name}={getattr(config, name)!r}, which a model card cannot record "
                f"(card architecture fields: {sorted(recordable)}); keep {name} at {getattr(defaults, name)!r}"
            )
    values = {name: getattr(config, name) for name in recordable if hasattr(config, name)}
    return ArchitectureSpec(**values)


def write_model_card(
    weights_path: Path,
    *,
    name: str,
    description: str,
    chips: ChipSpec,
    config: ModelConfig,
    input_scaling: Any,
    patch_size: int,
    token_grid: int,
    training: dict[str, Any] | None = None,
) -> Path:
    """Write ``<weights>.yaml`` for a trained model, validated by loading it back.

    The reference GSD and patch size are those of the training chips, so
    inference on a scene of GSD g uses ``round(patch_size * chips.gsd_m / g)``.
    ``training`` (hyper-parameters, validation scores) is appended as one
    YAML comment line, because the card schema has no field for it.
    """
    card = ModelCard(
        name=name,
        description=description,
        task=chips.task,
        classes=[ClassInfo(id=c.id, name=c.name, color=c.color) for c in chips.classes],
        architecture=architecture_of(config),
        weights=weights_path.name,
        wavelengths_um=list(chips.wavelengths_um),
        input_scaling=input_scaling,
        reference_gsd_m=chips.gsd_m,
        reference_patch_size=patch_size,
        token_grid=token_grid,
    )
    document = card.model_dump(mode="json", exclude_none=True)
    if isinstance(document.get("architecture"), dict):
        document["architecture"] = {k: v for k, v in document["architecture"].items() if v is not None}
    card_path = weights_path.with_suffix(".yaml")
    text = yaml.safe_dump(document, sort_keys=False)
    if training:
        text += "# training: " + yaml.safe_dump(training, default_flow_style=True, sort_keys=False, width=10_000)
    card_path.write_text(text)
    load_card(card_path)
    return card_path


def save_weights(model: FlexiMo, path: Path, dtype: torch.dtype = torch.float32) -> Path:
    """Save the model's state dict (FlexiMo key names) as a ``torch.save`` file."""
    state = {
        key: (value.detach().to("cpu", dtype) if value.is_floating_point() else value.detach().cpu())
        for key, value in model.state_dict().items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, temporary)
    temporary.replace(path)
    return path
