"""Model cards: what the pipeline must know about a checkpoint, in YAML beside it.

A card records the task, the classes with names and colours, the
architecture and where the weights are. It also records the bands and input
scaling the weights were trained with, and the reference GSD, patch size and
token grid from which the pipeline chooses the patch size for other sensors.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from pipeline.model.config import HeadType, ModelConfig
from pipeline.model.presets import MODEL_PRESETS, preset_config
from pipeline.model.scaling import InputScaling, StoredInputTransform
from pipeline.model.validation import validate_wavelengths

Task = Literal["landcover", "cloud", "classification"]
TASK_HEADS: dict[str, HeadType] = {"landcover": "upernet", "cloud": "upernet", "classification": "classifier"}
SEEDED_RANDOM = "seeded-random"
_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")
_HASH_BLOCK_BYTES = 1 << 20


class ModelCardError(ValueError):
    """A model card is missing, malformed or inconsistent with its model."""


class ClassInfo(BaseModel):
    """One output class: id (logit channel), name and display colour ``#rrggbb``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: int = Field(ge=0)
    name: str = Field(min_length=1)
    color: str

    @field_validator("color")
    @classmethod
    def _check_color(cls, value: str) -> str:
        if not _COLOR.match(value):
            raise ValueError(f"color must be '#rrggbb' hex, got {value!r}")
        return value.lower()


class ArchitectureSpec(BaseModel):
    """Explicit architecture: a preset with changes, or all encoder fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    preset: str | None = None
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    head: Literal["classifier", "upernet"] | None = None
    mlp_ratio: float | None = None
    pos_embed_grid: int | None = None
    decoder_channels: int | None = None
    decoder_fpn_channels: int | None = None
    pixel_skip_channels: int | None = None

    @model_validator(mode="after")
    def _complete(self) -> ArchitectureSpec:
        if self.preset is not None and self.preset not in MODEL_PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; expected one of {sorted(MODEL_PRESETS)}")
        if self.preset is None and None in (self.embed_dim, self.depth, self.num_heads):
            raise ValueError("give a preset, or embed_dim, depth and num_heads")
        return self


class ModelCard(BaseModel):
    """Description of a checkpoint that the pipeline needs to run it.

    Load one with :func:`load_card`; relative ``weights`` paths resolve
    against the card's folder.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    description: str = ""
    task: Task
    classes: list[ClassInfo] = Field(min_length=1)
    architecture: str | ArchitectureSpec
    weights: str = Field(min_length=1)
    seed: int | None = None
    wavelengths_um: list[float] = Field(min_length=1)
    input_scaling: InputScaling
    reference_gsd_m: float = Field(gt=0)
    reference_patch_size: int = Field(ge=1)
    token_grid: int = Field(ge=1)

    _source_path: Path | None = PrivateAttr(default=None)

    @field_validator("architecture")
    @classmethod
    def _check_preset(cls, value: str | ArchitectureSpec) -> str | ArchitectureSpec:
        if isinstance(value, str) and value not in MODEL_PRESETS:
            raise ValueError(f"unknown preset {value!r}; expected one of {sorted(MODEL_PRESETS)}")
        return value

    @field_validator("wavelengths_um")
    @classmethod
    def _check_wavelengths(cls, value: list[float]) -> list[float]:
        validate_wavelengths(value)
        return value

    @model_validator(mode="after")
    def _check_consistency(self) -> ModelCard:
        ids = sorted(c.id for c in self.classes)
        if ids != list(range(len(ids))):
            raise ValueError(f"class ids must be 0..{len(ids) - 1} without gaps or repeats, got {ids}")
        if self.weights == SEEDED_RANDOM and self.seed is None:
            raise ValueError("weights 'seeded-random' needs a seed")
        spec = self.architecture
        expected_head = TASK_HEADS[self.task]
        if isinstance(spec, ArchitectureSpec) and spec.head is not None and spec.head != expected_head:
            raise ValueError(f"task {self.task!r} needs a {expected_head!r} head, but architecture.head is {spec.head!r}")
        self.to_model_config()
        return self

    def to_model_config(self) -> ModelConfig:
        """Return the :class:`ModelConfig` the card describes (classes from ``classes``)."""
        head = TASK_HEADS[self.task]
        num_classes = len(self.classes)
        spec = self.architecture
        if isinstance(spec, str):
            return preset_config(spec, head=head, num_classes=num_classes)
        base = preset_config(spec.preset, head=head, num_classes=num_classes) if spec.preset else None
        changes = {k: v for k, v in spec.model_dump(exclude={"preset"}).items() if v is not None}
        changes.update(head=head, num_classes=num_classes)
        return base.replace(**changes) if base else ModelConfig(**changes)

    @property
    def class_names(self) -> list[str]:
        """Class names ordered by id."""
        return [c.name for c in sorted(self.classes, key=lambda c: c.id)]

    @property
    def source_path(self) -> Path | None:
        """Path of the YAML file the card was read from, if any."""
        return self._source_path

    def weights_path(self) -> Path | None:
        """Return the checkpoint path, or ``None`` for seeded-random weights."""
        if self.weights == SEEDED_RANDOM:
            return None
        path = Path(self.weights)
        if not path.is_absolute() and self._source_path is not None:
            path = self._source_path.parent / path
        return path

    def check_model(self, config: ModelConfig) -> None:
        """Raise :class:`ModelCardError` if ``config`` disagrees with the card."""
        expected = self.to_model_config()
        for field in ("head", "num_classes", "embed_dim", "depth"):
            if getattr(config, field) != getattr(expected, field):
                raise ModelCardError(
                    f"Model card {self.name!r} specifies {field}={getattr(expected, field)!r}, but the checkpoint "
                    f"has {field}={getattr(config, field)!r}; fix the card's architecture or classes."
                )

    def prepare_input(self, reflectance: torch.Tensor, wavelengths_um: Sequence[float]) -> torch.Tensor:
        """Convert reflectance ``(B, C, H, W)`` (0-1 float) to the input space of the weights.

        Bands are matched to the card's statistics by wavelength. A band the
        card has no statistics for takes those of the nearest wavelength, with
        a :class:`~pipeline.warnings.FleximoWarning`.
        """
        validate_wavelengths(wavelengths_um, reflectance.shape[1] if reflectance.dim() == 4 else None)
        if reflectance.dim() != 4:
            raise ValueError(f"reflectance must have shape (B, C, H, W), got {tuple(reflectance.shape)}.")
        return self.input_scaling.apply(reflectance.float(), wavelengths_um)

    def stored_input_transform(
        self, wavelengths_um: Sequence[float], stored_scale: float
    ) -> StoredInputTransform | None:
        """Return :meth:`prepare_input` as one affine step per band on stored integers, if it is one.

        ``stored_scale`` converts the stored integers to reflectance. ``None``
        means the inference stage must call :meth:`prepare_input` on each batch.
        """
        validate_wavelengths(wavelengths_um)
        return self.input_scaling.stored_transform(wavelengths_um, stored_scale)

    def fingerprint(self) -> str:
        """Return a SHA-256 hex digest of the card's content and the checkpoint's bytes."""
        digest = hashlib.sha256(self.model_dump_json().encode())
        path = self.weights_path()
        if path is not None:
            with open(path, "rb") as file:
                while block := file.read(_HASH_BLOCK_BYTES):
                    digest.update(block)
        return digest.hexdigest()


def _format_card_errors(path: Path, error: ValidationError) -> str:
    """Render pydantic's errors as one line per field: location, problem, offending value."""
    lines = [f"model card {str(path)!r} is invalid:"]
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field; check the spelling against the cards in pipeline/model/cards/"
        elif item["type"] == "missing":
            message = "required field is missing"
        elif "wavelength" in location and item["type"] in {"less_than", "less_than_equal"}:
            message = f"{message}; wavelengths are in micrometres (µm), not nanometres"
        value = item.get("input")
        shown = "" if item["type"] == "missing" or isinstance(value, (dict, list)) else f" (got {value!r})"
        lines.append(f"  {location}: {message}{shown}")
    return "\n".join(lines)


def load_card(path: str | Path) -> ModelCard:
    """Read and validate a model card.

    Parameters
    ----------
    path
        The card's YAML file, or a checkpoint path whose card is the same
        name with ``.yaml`` (``model.pth`` -> ``model.yaml``).

    Raises
    ------
    FileNotFoundError
        If the card or the checkpoint it names does not exist.
    ModelCardError
        If the YAML is malformed or a field is invalid; the message names it.
    """
    path = Path(path)
    if path.suffix not in (".yaml", ".yml"):
        path = path.with_suffix(".yaml")
    if not path.is_file():
        raise FileNotFoundError(f"Model card not found: {str(path)!r}.")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ModelCardError(f"Model card {str(path)!r} is not valid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise ModelCardError(f"Model card {str(path)!r} must be a YAML mapping, got {type(raw).__name__}.")
    if "input_scaling" not in raw:
        raise ModelCardError(
            f"Model card {str(path)!r} does not state its input_scaling; add 'input_scaling: {{kind: reflectance}}' "
            "or 'kind: dofa-8bit' with per-band statistics, as the weights were trained."
        )
    try:
        card = ModelCard.model_validate(raw)
    except ValidationError as error:
        raise ModelCardError(_format_card_errors(Path(path), error)) from None
    card._source_path = path.resolve()

    weights = card.weights_path()
    if weights is not None and not weights.is_file():
        raise FileNotFoundError(
            f"Model card {str(path)!r} names weights {card.weights!r}, but {str(weights)!r} does not exist."
        )
    return card


def find_card_beside(checkpoint: str | Path) -> ModelCard | None:
    """Return the card ``<checkpoint>.yaml`` if it exists, validated; else ``None``."""
    candidate = Path(checkpoint).with_suffix(".yaml")
    return load_card(candidate) if candidate.is_file() else None


def load_model_from_card(card: ModelCard, *, device: str | torch.device = "cpu"):  # type: ignore[no-untyped-def]
    """Build or load the model a card describes, in eval mode on ``device``.

    Seeded-random cards build the architecture with
    :func:`~pipeline.model.build.build_model` and the card's seed; others load
    the checkpoint through :func:`~pipeline.model.checkpoint.load_model` and
    check it against the card.
    """
    from pipeline.model.build import build_model
    from pipeline.model.checkpoint import load_model

    config = card.to_model_config()
    path = card.weights_path()
    if path is None:
        return build_model(config, seed=card.seed).to(device)
    model = load_model(path, num_heads=config.num_heads, head=config.head, map_location=device)
    card.check_model(model.config)
    return model
