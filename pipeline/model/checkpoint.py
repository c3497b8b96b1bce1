"""Loading DOFA and FlexiMo checkpoints into :class:`FlexiMo` models.

One function reads every supported format: raw state dicts (``.pth``,
``.pt``), containers (``{"model": ...}``, ``{"state_dict": ...}``),
``module.``-style prefixes and safetensors files. The architecture is inferred
from the tensor shapes; every missing, unexpected or misshapen key is
reported together in one :class:`CheckpointError`.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch

from pipeline.model.build import initialize_weights
from pipeline.model.config import HEAD_TYPES, HeadType, ModelConfig
from pipeline.model.upernet import PIXEL_SKIP_KEY
from pipeline.model.fleximo import FlexiMo
from pipeline.warnings import FleximoWarning

logger = logging.getLogger(__name__)

# Container keys that wrap a state dict, in the order they are tried.
CONTAINER_KEYS = ("state_dict", "model", "model_state_dict", "module", "net")
# Prefixes added by DataParallel / DDP, Lightning-style wrappers and torch.compile.
STRIPPED_PREFIXES = ("module.", "model.", "_orig_mod.")
# DOFA's width per attention head; a state dict does not record the head count.
DOFA_HEAD_DIM = 64

_CLASSIFIER_KEYS = ("fc_norm.", "head.")
_UPERNET_KEYS = ("conv0.", "conv1.", "conv2.", "conv3.", "decoder.", "cls_seg.")


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not match the model."""


def read_state_dict(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a checkpoint file and return its flat state dict.

    Parameters
    ----------
    path
        ``.safetensors`` file, or a ``torch.save`` file read with
        ``weights_only=True`` (no code from the file is run).
    map_location
        Device the tensors are loaded to.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    CheckpointError
        If the file contains no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint not found: {str(path)!r}.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path), device=str(map_location)))
    try:
        loaded = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for unsafe or corrupt files
        raise CheckpointError(
            f"Cannot read checkpoint {str(path)!r} with torch.load(weights_only=True): {error}. "
            "Only tensor state dicts (optionally in a dict container) are accepted; re-save the weights "
            "with torch.save(model.state_dict(), path) or as safetensors."
        ) from error
    return strip_prefixes(unwrap_container(loaded, source=str(path)))


def unwrap_container(loaded: object, *, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Return the tensor state dict inside ``loaded`` (a state dict or a container of one)."""
    current = loaded
    while isinstance(current, Mapping):
        tensors = {k: v for k, v in current.items() if isinstance(v, torch.Tensor)}
        if tensors and len(tensors) == len(current):
            return dict(tensors)
        inner = next((current[k] for k in CONTAINER_KEYS if isinstance(current.get(k), Mapping)), None)
        if inner is None:
            if len(tensors) > len(current) / 2:
                return dict(tensors)
            break
        current = inner
    keys = sorted(map(str, loaded))[:10] if isinstance(loaded, Mapping) else []
    raise CheckpointError(
        f"{source} contains no state dict: got {type(loaded).__name__} with keys {keys}; expected a mapping of "
        f"parameter names to tensors, or a container with one under {list(CONTAINER_KEYS)}."
    )


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove prefixes such as ``module.`` that all keys share."""
    changed = True
    while changed and state:
        changed = False
        for prefix in STRIPPED_PREFIXES:
            if all(key.startswith(prefix) for key in state):
                state = {key[len(prefix) :]: value for key, value in state.items()}
                changed = True
    return state


def detect_head(state: Mapping[str, torch.Tensor]) -> HeadType | None:
    """Return the head stored in a state dict, or ``None`` for a backbone only."""
    if "cls_seg.0.weight" in state:
        return "upernet"
    if "head.weight" in state:
        return "classifier"
    return None


def _require(state: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state:
        raise CheckpointError(
            f"Checkpoint has no {key!r}, so it is not a DOFA / FlexiMo state dict "
            f"(first keys: {sorted(state)[:8]})."
        )
    return state[key]


def infer_config(
    state: Mapping[str, torch.Tensor],
    *,
    num_heads: int | None = None,
    head: HeadType | None = None,
    num_classes: int | None = None,
) -> ModelConfig:
    """Infer a :class:`ModelConfig` from the shapes in a state dict.

    Parameters
    ----------
    state
        Flat state dict with DOFA / FlexiMo keys.
    num_heads
        Attention heads; ``None`` means ``embed_dim // 64`` as in DOFA.
    head, num_classes
        Override what the state dict stores, or give them for a backbone-only
        checkpoint.
    """
    pos_embed = _require(state, "pos_embed")
    embed_dim = pos_embed.shape[-1]
    grid = math.isqrt(pos_embed.shape[1] - 1)
    block_ids = {int(m.group(1)) for key in state if (m := re.match(r"blocks\.(\d+)\.", key))}
    if not block_ids:
        raise CheckpointError("Checkpoint has no 'blocks.<i>.*' keys, so it is not a DOFA / FlexiMo state dict.")
    mlp_dim = _require(state, "blocks.0.mlp.fc1.weight").shape[0]
    weight_tokens = _require(state, "patch_embed.weight_generator.weight_tokens")
    fc_weight = _require(state, "patch_embed.weight_generator.fc_weight.weight")
    ffn_dim = _require(state, "patch_embed.weight_generator.transformer_encoder.layers.0.linear1.weight").shape[0]

    stored_head = detect_head(state)
    head = head if head is not None else stored_head
    if head is None:
        raise CheckpointError(
            "Checkpoint has a backbone only (no 'head.*' or 'cls_seg.*' keys); pass head='classifier' or "
            "head='upernet', num_classes=... and allow_new_head=True to attach a freshly initialised head."
        )
    if head not in HEAD_TYPES:
        raise ValueError(f"head must be one of {HEAD_TYPES}, got {head!r}.")
    stored_classes = None
    if head == stored_head:
        stored_classes = state["head.weight" if head == "classifier" else "cls_seg.0.weight"].shape[0]
    if num_classes is None:
        if stored_classes is None:
            raise CheckpointError(f"Checkpoint has no {head} head, so num_classes must be given.")
        num_classes = stored_classes

    decoder: dict[str, int] = {}
    if head == "upernet" and stored_head == "upernet":
        decoder = {
            "decoder_channels": _require(state, "conv3.0.weight").shape[0],
            "decoder_fpn_channels": _require(state, "decoder.conv_x1.weight").shape[0],
        }
        if PIXEL_SKIP_KEY in state:
            decoder["pixel_skip_channels"] = state[PIXEL_SKIP_KEY].shape[0]

    if num_heads is None:
        num_heads = max(1, embed_dim // DOFA_HEAD_DIM)
    return ModelConfig(
        embed_dim=embed_dim,
        depth=max(block_ids) + 1,
        num_heads=num_heads,
        num_classes=int(num_classes),
        head=head,
        mlp_ratio=mlp_dim / embed_dim,
        pos_embed_grid=grid,
        kernel_size=math.isqrt(fc_weight.shape[0] // embed_dim),
        wavelength_dim=weight_tokens.shape[1],
        num_weight_tokens=weight_tokens.shape[0],
        generator_ffn_dim=ffn_dim,
        **decoder,
    )


def _head_prefixes(head: HeadType) -> tuple[str, ...]:
    return _CLASSIFIER_KEYS if head == "classifier" else _UPERNET_KEYS


def load_state_into(
    model: FlexiMo,
    state: Mapping[str, torch.Tensor],
    *,
    allow_new_head: bool = False,
    source: str = "checkpoint",
) -> list[str]:
    """Copy ``state`` into ``model``, reporting every mismatch in one error.

    Returns the keys left at their initial value, which can only be the head's
    and only with ``allow_new_head=True``.

    Raises
    ------
    CheckpointError
        Listing every missing, unexpected or misshapen key.
    """
    expected = model.state_dict()
    # BatchNorm's batch counter does not affect inference.
    optional = {key for key in expected if key.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(state) - optional)
    unexpected = sorted(set(state) - set(expected))
    misshapen = sorted(
        f"{key}: checkpoint {tuple(state[key].shape)}, model {tuple(expected[key].shape)}"
        for key in set(state) & set(expected)
        if state[key].shape != expected[key].shape
    )

    new_head: list[str] = []
    head_prefixes = _head_prefixes(model.config.head)
    if allow_new_head and missing and all(key.startswith(head_prefixes) for key in missing):
        if any(key.startswith(head_prefixes) for key in state):
            raise CheckpointError(
                f"{source} contains part of a {model.config.head} head but is missing {missing}; "
                "allow_new_head only replaces a head that is absent altogether."
            )
        new_head, missing = missing, []

    if missing or unexpected or misshapen:
        lines = [f"{source} does not match the FlexiMo model ({model.config}):"]
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", misshapen)):
            if keys:
                lines.append(f"  {title} ({len(keys)}): " + ", ".join(keys))
        lines.append(
            "Check that the checkpoint is a DOFA / FlexiMo state dict and that the head, num_classes and "
            "num_heads given to load_model match it."
        )
        raise CheckpointError("\n".join(lines))

    state = {key: value for key, value in state.items()}
    for key in new_head:
        state[key] = expected[key]
    for key in optional - set(state):
        state[key] = expected[key]
    model.load_state_dict(state, strict=True)
    return new_head


def load_model(
    path: str | Path,
    *,
    num_heads: int | None = None,
    head: HeadType | None = None,
    num_classes: int | None = None,
    allow_new_head: bool = False,
    map_location: str | torch.device = "cpu",
) -> FlexiMo:
    """Load a DOFA or FlexiMo checkpoint into a :class:`FlexiMo` model in eval mode.

    The architecture is inferred from the tensor shapes. If a model card
    (``<checkpoint>.yaml``) lies beside the checkpoint, it is loaded and
    validated, and its architecture supplies ``num_heads`` when not given.

    Parameters
    ----------
    path
        ``.pth`` / ``.pt`` (``torch.load(weights_only=True)``) or ``.safetensors``.
    num_heads
        Attention heads per block; default: the card's, else ``embed_dim // 64``.
    head
        ``"classifier"`` or ``"upernet"``; default: the head the checkpoint holds.
    num_classes
        Classes of the head; default: the checkpoint's.
    allow_new_head
        Attach a freshly initialised head when the checkpoint is a backbone
        only (DOFA pretraining), with a :class:`FleximoWarning`.
    map_location
        Device of the returned model.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    CheckpointError
        If the file is not a DOFA / FlexiMo state dict or does not match the
        architecture; the message lists every offending key.
    """
    from pipeline.model.cards import find_card_beside

    path = Path(path)
    state = read_state_dict(path, map_location="cpu")
    card = find_card_beside(path)
    if card is not None and num_heads is None:
        num_heads = card.to_model_config().num_heads

    config = infer_config(state, num_heads=num_heads, head=head, num_classes=num_classes)
    model = FlexiMo(config)
    new_head = load_state_into(model, state, allow_new_head=allow_new_head, source=f"Checkpoint {str(path)!r}")
    if new_head:
        head_parameters = ("dense_head.",) if config.head == "upernet" else _CLASSIFIER_KEYS
        initialize_weights(model, seed=0, only=head_parameters)
        warnings.warn(
            f"Checkpoint {str(path)!r} has no {config.head} head; attached a freshly initialised one "
            f"({len(new_head)} tensors). Its outputs are meaningless until the head is trained.",
            FleximoWarning,
            stacklevel=2,
        )
    if card is not None:
        card.check_model(config)
    logger.info("Loaded %s from %s", config, path)
    return model.to(map_location).eval()
