"""Named model configurations: the DOFA ViT sizes and a tiny one for tests.

Every preset has a classifier form (``"vit_base"``) and a dense form with the
upernet head (``"vit_base_upernet"``). The tiny preset (embed 64, depth 2,
4 heads, 14x14 position grid, DOFA's full-size kernel generator) has a narrow
decoder so that tests stay fast.
"""

from __future__ import annotations

from pipeline.model.config import HeadType, ModelConfig

_ENCODERS: dict[str, dict[str, int]] = {
    "vit_base": {"embed_dim": 768, "depth": 12, "num_heads": 12},
    "vit_large": {"embed_dim": 1024, "depth": 24, "num_heads": 16},
    "tiny": {"embed_dim": 64, "depth": 2, "num_heads": 4},
}

# (decoder_channels, decoder_fpn_channels) of the upernet form of each preset.
_DECODERS: dict[str, tuple[int, int]] = {
    "vit_base": (1024, 256),
    "vit_large": (1024, 256),
    "tiny": (64, 32),
}

_DEFAULT_CLASSES = {"classifier": 1000, "upernet": 10}


def _build_presets() -> dict[str, ModelConfig]:
    presets: dict[str, ModelConfig] = {}
    for name, encoder in _ENCODERS.items():
        presets[name] = ModelConfig(**encoder, num_classes=_DEFAULT_CLASSES["classifier"], head="classifier")
        channels, fpn_channels = _DECODERS[name]
        presets[f"{name}_upernet"] = ModelConfig(
            **encoder,
            num_classes=_DEFAULT_CLASSES["upernet"],
            head="upernet",
            decoder_channels=channels,
            decoder_fpn_channels=fpn_channels,
        )
    return presets


MODEL_PRESETS: dict[str, ModelConfig] = _build_presets()


def preset_config(
    name: str,
    *,
    head: HeadType | None = None,
    num_classes: int | None = None,
) -> ModelConfig:
    """Return a preset's configuration, optionally with another head or class count.

    Parameters
    ----------
    name
        A key of :data:`MODEL_PRESETS`, e.g. ``"vit_base"`` or ``"tiny_upernet"``.
    head
        ``"classifier"`` or ``"upernet"``; ``None`` keeps the preset's head.
    num_classes
        Number of output classes; ``None`` keeps the preset's.

    Raises
    ------
    KeyError
        If ``name`` is not a preset.
    """
    if name not in MODEL_PRESETS:
        raise KeyError(f"Unknown model preset {name!r}; expected one of {sorted(MODEL_PRESETS)}.")
    config = MODEL_PRESETS[name]
    base = name.removesuffix("_upernet")
    if head is not None and head != config.head:
        config = MODEL_PRESETS[base if head == "classifier" else f"{base}_upernet"]
    if num_classes is not None:
        config = config.replace(num_classes=num_classes)
    return config
