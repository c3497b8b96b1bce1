"""Architecture description of a FlexiMo model.

:class:`ModelConfig` is small, frozen and hashable, so it can key caches and
travel inside a Dask graph. Named presets live in :mod:`pipeline.model.presets`.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

HeadType = Literal["classifier", "upernet"]
HEAD_TYPES: tuple[str, ...] = ("classifier", "upernet")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shapes and hyper-parameters of a FlexiMo encoder and its head.

    Parameters
    ----------
    embed_dim
        Token width D of the ViT (768 for DOFA base, 1024 for large).
    depth
        Number of transformer blocks.
    num_heads
        Attention heads per block. A state dict does not record it; the
        public DOFA checkpoints use 64-dimensional heads.
    num_classes
        Output classes of the head.
    head
        ``"classifier"``: mean-pooled tokens, ``fc_norm`` and a linear layer,
        logits ``(B, classes)``. ``"upernet"``: dense head, logits
        ``(B, classes, H, W)`` at the input's pixel size.
    mlp_ratio
        Hidden width of the block MLPs relative to ``embed_dim``.
    pos_embed_grid
        Side of the square position-embedding grid stored in the checkpoint
        (14 for DOFA: 224 px at patch size 16).
    kernel_size
        Side of the generated base kernels (16 for DOFA); other patch sizes
        are obtained by PI-resize.
    wavelength_dim
        Width of the wavelength embedding and of the kernel generator (128).
    num_weight_tokens
        Learned weight tokens of the kernel generator (128).
    generator_heads
        Attention heads of the kernel generator's transformer layer (4).
    generator_ffn_dim
        Feed-forward width of the kernel generator's transformer layer (2048).
    layernorm_eps
        Epsilon of the ViT LayerNorms (1e-6, as in DOFA).
    decoder_channels
        Upernet head only: width of the deepest branch ``conv3``; branches
        ``conv2``, ``conv1``, ``conv0`` have 1/2, 1/4 and 1/8 of it.
    decoder_fpn_channels
        Upernet head only: width of the PPM and FPN decoder.
    norm_groups
        Upernet head only: GroupNorm groups of the branches (reduced to the
        greatest common divisor with a branch's width).
    pixel_skip_channels
        Upernet head only: width of the spectral pixel skip (see
        :class:`pipeline.model.upernet.SpectralPixelSkip`), a full-resolution
        path from the input bands to the classifier. 0 (the default, and the
        reference FlexiMo head) leaves it out.
    """

    embed_dim: int
    depth: int
    num_heads: int
    num_classes: int
    head: HeadType = "classifier"
    mlp_ratio: float = 4.0
    pos_embed_grid: int = 14
    kernel_size: int = 16
    wavelength_dim: int = 128
    num_weight_tokens: int = 128
    generator_heads: int = 4
    generator_ffn_dim: int = 2048
    layernorm_eps: float = 1e-6
    decoder_channels: int = 1024
    decoder_fpn_channels: int = 256
    norm_groups: int = 32
    pixel_skip_channels: int = 0

    def __post_init__(self) -> None:
        positive = {
            "embed_dim": self.embed_dim,
            "depth": self.depth,
            "num_heads": self.num_heads,
            "num_classes": self.num_classes,
            "pos_embed_grid": self.pos_embed_grid,
            "kernel_size": self.kernel_size,
            "wavelength_dim": self.wavelength_dim,
            "num_weight_tokens": self.num_weight_tokens,
            "generator_heads": self.generator_heads,
            "generator_ffn_dim": self.generator_ffn_dim,
            "decoder_fpn_channels": self.decoder_fpn_channels,
            "norm_groups": self.norm_groups,
        }
        for name, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}.")
        if not isinstance(self.pixel_skip_channels, int) or self.pixel_skip_channels < 0:
            raise ValueError(
                f"ModelConfig.pixel_skip_channels must be 0 (no skip) or a positive integer, "
                f"got {self.pixel_skip_channels!r}."
            )
        if self.pixel_skip_channels and self.head != "upernet":
            raise ValueError(
                f"ModelConfig.pixel_skip_channels={self.pixel_skip_channels} needs the upernet head, "
                f"because the {self.head!r} head has no pixel output. Set it to 0."
            )
        if self.head not in HEAD_TYPES:
            raise ValueError(f"ModelConfig.head must be one of {HEAD_TYPES}, got {self.head!r}.")
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"ModelConfig.embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}; "
                "choose a head count that divides the embedding width (DOFA uses embed_dim // 64)."
            )
        if self.wavelength_dim % 2 or self.wavelength_dim % self.generator_heads:
            raise ValueError(
                f"ModelConfig.wavelength_dim={self.wavelength_dim} must be even and divisible by "
                f"generator_heads={self.generator_heads}."
            )
        if self.mlp_ratio <= 0 or int(self.embed_dim * self.mlp_ratio) != self.embed_dim * self.mlp_ratio:
            raise ValueError(
                f"ModelConfig.mlp_ratio={self.mlp_ratio} must be positive and give an integer MLP width "
                f"with embed_dim={self.embed_dim}."
            )
        if self.head == "upernet" and (self.decoder_channels < 8 or self.decoder_channels % 8):
            raise ValueError(
                f"ModelConfig.decoder_channels={self.decoder_channels} must be a positive multiple of 8, "
                "because the four branches are 1/8, 1/4, 1/2 and 1 of it wide."
            )

    @property
    def mlp_hidden_dim(self) -> int:
        """Hidden width of the block MLPs."""
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def branch_channels(self) -> tuple[int, int, int, int]:
        """Widths of the upernet branches ``conv0`` .. ``conv3``."""
        c = self.decoder_channels
        return (c // 8, c // 4, c // 2, c)

    def replace(self, **changes: object) -> ModelConfig:
        """Return a copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
