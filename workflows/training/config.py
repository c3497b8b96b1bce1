"""Fine-tuning configuration, validated once from YAML or keyword arguments.

A fine-tuning job file looks like::

    name: cloud_l8_tiny
    task: cloud
    chips: {root: chips/l8, layout: generic}
    init:
      source: scratch              # scratch | checkpoint
      preset: tiny_upernet         # scratch: a MODEL_PRESETS key
      reference_patch_size: 16     # scratch: patch size at the chips' GSD
    train:
      epochs: 20
      batch_size: 16
      lr: 1.0e-3
    output: runs/cloud_l8_tiny

See :class:`FinetuneConfig` for every field and its default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ChipSource(BaseModel):
    """Location and layout of the chips, and how to split them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    root: Path
    layout: Literal["generic", "segmunich", "gf12ms-whu"] = "generic"
    options: dict[str, Any] = Field(default_factory=dict, description="reader options, e.g. sensor, value_scale")
    val_block_m: float | None = Field(default=None, gt=0, description="re-split by blocks of this size, metres")
    val_fraction: float = Field(default=0.2, gt=0, lt=1)
    val_split: Literal["val", "test"] = "val"


class InitSpec(BaseModel):
    """The starting weights: a checkpoint (DOFA backbone or FlexiMo model) or scratch."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: Literal["scratch", "checkpoint"] = "scratch"
    checkpoint: Path | None = Field(default=None, description="checkpoint: .pth/.safetensors file")
    card: Path | None = Field(default=None, description="checkpoint: its model card YAML, if not beside it")
    preset: str | None = Field(default=None, description="scratch: a MODEL_PRESETS key")
    architecture: dict[str, Any] = Field(default_factory=dict, description="scratch: ModelConfig fields over the preset")
    seed: int = 0
    reference_gsd_m: float | None = Field(default=None, gt=0, description="default: the card's, else the chips' GSD")
    reference_patch_size: int | None = Field(default=None, ge=1, description="default: the card's, else 16")
    input_scaling: dict[str, Any] | None = Field(default=None, description="default: the card's; from scratch, per-band statistics of the training chips")

    @model_validator(mode="after")
    def _complete(self) -> InitSpec:
        if self.source == "checkpoint" and self.checkpoint is None and self.card is None:
            raise ValueError("init.source is 'checkpoint' but neither init.checkpoint nor init.card is set")
        if self.source == "scratch" and self.preset is None and not self.architecture:
            raise ValueError("init.source is 'scratch'; set init.preset (e.g. tiny_upernet) and/or init.architecture")
        return self


class TrainSpec(BaseModel):
    """Optimiser, schedule and loop settings."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    epochs: int = Field(default=10, ge=1)
    max_steps: int | None = Field(default=None, ge=1, description="stop after this many optimiser steps")
    batch_size: int = Field(default=16, ge=1, description="per process")
    lr: float = Field(default=1e-3, gt=0, description="peak learning rate of the head")
    backbone_lr: float | None = Field(default=None, gt=0, description="peak learning rate of the encoder; default lr / 10")
    freeze_backbone: bool = True
    weight_decay: float = Field(default=0.05, ge=0)
    warmup_fraction: float = Field(default=0.05, ge=0, lt=1, description="share of the steps spent in linear warm-up")
    min_lr_ratio: float = Field(default=0.01, ge=0, le=1, description="final learning rate / peak, end of the cosine")
    class_weights: Literal["none", "inverse-sqrt", "enet"] | list[float] = "inverse-sqrt"
    augment: bool = True
    gain_jitter: float = Field(default=0.0, ge=0, le=1, description="random per-chip reflectance gain exp(U(-g, g))")
    precision: Literal["auto", "float32", "bfloat16"] = "auto"
    device: str = Field(default="auto", description="auto, cpu, cuda or cuda:N")
    num_workers: int = Field(default=0, ge=0)
    torch_threads: int | None = Field(default=None, ge=1, description="CPU threads of this process; default: torch's")
    val_every_epochs: int = Field(default=1, ge=1)
    grad_clip: float | None = Field(default=1.0, gt=0)
    seed: int = 0
    patch_size: int | None = Field(default=None, ge=1, description="override of the GSD-matched patch size")
    weights_dtype: Literal["float32", "float16", "bfloat16"] = "float32"


class FinetuneConfig(BaseModel):
    """A complete fine-tuning run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    task: Literal["landcover", "cloud"] | None = Field(default=None, description="default: the chips' task")
    description: str = ""
    chips: ChipSource
    init: InitSpec
    train: TrainSpec = Field(default_factory=TrainSpec)
    output: Path
    resume: bool = Field(default=True, description="continue from output/last.pt when it exists")


def load_finetune_config(source: str | Path | dict[str, Any], **overrides: Any) -> FinetuneConfig:
    """Validate a fine-tuning configuration from a YAML path or a dict.

    Relative paths in a YAML file are taken relative to the file's folder.
    ``overrides`` replace top-level fields (e.g. ``output=...``).

    Raises
    ------
    FileNotFoundError
        If the YAML file does not exist.
    ValueError
        If a field is missing or invalid; the message names the field.
    """
    base = Path.cwd()
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"fine-tuning config {path} not found")
        document = yaml.safe_load(path.read_text()) or {}
        base = path.resolve().parent
    else:
        document = dict(source)
    document.update({key: value for key, value in overrides.items() if value is not None})

    try:
        config = FinetuneConfig.model_validate(document)
    except ValidationError as error:
        raise ValueError(f"invalid fine-tuning config:\n{error}") from error
    return _resolve_paths(config, base)


def _resolve_paths(config: FinetuneConfig, base: Path) -> FinetuneConfig:
    def absolute(path: Path | None) -> Path | None:
        if path is None or path.is_absolute():
            return path
        return base / path

    chips = config.chips.model_copy(update={"root": absolute(config.chips.root)})
    init = config.init.model_copy(update={"checkpoint": absolute(config.init.checkpoint), "card": absolute(config.init.card)})
    return config.model_copy(update={"chips": chips, "init": init, "output": absolute(config.output)})
