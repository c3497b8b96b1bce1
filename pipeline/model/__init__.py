"""FlexiMo in PyTorch: DOFA's wavelength-conditioned ViT at any patch size and band set.

Typical use::

    from pipeline.model import load_model

    model = load_model("dofa_base_landcover.pth")
    logits = model(x, wavelengths_um=[0.49, 0.56, 0.665, 0.842], patch_size=16)
"""

from pipeline.model.build import build_model, initialize_weights
from pipeline.model.cards import (
    ArchitectureSpec,
    ClassInfo,
    ModelCard,
    ModelCardError,
    load_card,
    load_model_from_card,
)
from pipeline.model.checkpoint import CheckpointError, infer_config, load_model, read_state_dict
from pipeline.model.config import HeadType, ModelConfig
from pipeline.model.fleximo import FlexiMo, resize_pos_embed
from pipeline.model.pi_resize import pi_resize_kernel, pinv_matrix, resize_patch
from pipeline.model.precision import (
    AUTO_PRECISION,
    PRECISIONS,
    Precision,
    autocast,
    bfloat16_available,
    precision_for_device,
    resolve_precision,
)
from pipeline.model.presets import MODEL_PRESETS, preset_config
from pipeline.model.scaling import BandStats, Dofa8BitScaling, ReflectanceScaling
from pipeline.model.validation import token_grid

__all__ = [
    "MODEL_PRESETS",
    "AUTO_PRECISION",
    "PRECISIONS",
    "ArchitectureSpec",
    "BandStats",
    "CheckpointError",
    "ClassInfo",
    "Dofa8BitScaling",
    "FlexiMo",
    "HeadType",
    "ModelCard",
    "ModelCardError",
    "ModelConfig",
    "Precision",
    "ReflectanceScaling",
    "autocast",
    "bfloat16_available",
    "build_model",
    "infer_config",
    "initialize_weights",
    "load_card",
    "load_model",
    "load_model_from_card",
    "pi_resize_kernel",
    "pinv_matrix",
    "preset_config",
    "read_state_dict",
    "resize_patch",
    "resize_pos_embed",
    "precision_for_device",
    "resolve_precision",
    "token_grid",
]
