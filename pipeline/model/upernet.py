"""UPerNet-like dense head of the FlexiMo pixel tasks, for any token grid.

The ViT's patch tokens, as a ``(B, D, h, w)`` map, feed four branches
``conv0`` .. ``conv3`` (1x1 conv, GroupNorm, GELU, transposed conv) that
upsample by 16, 8, 4 and 2 and are ``c/8``, ``c/4``, ``c/2`` and ``c`` wide.
A pyramid-pooling module on the coarsest branch and an FPN top-down path
(``decoder.*``) fuse them at ``16 h x 16 w``. Then ``cls_seg`` (3x3 conv)
gives class logits, which are resized bilinearly to the input tile's size.

An optional spectral pixel skip (``pixel_skip.*``, off in the reference
head) adds a full-resolution path from the input bands: see
:class:`SpectralPixelSkip`.

NOTE: the parameter names (``conv0.0``, ``decoder.PPMHead.psp_modules.0.1``,
``decoder.Conv_fuse1``, ``decoder.fuse_all``, ``cls_seg.0``, ...) and the
max pooling in the PPM follow the SpectralGPT-style segmentation code that the
FlexiMo pixel tasks build on. They are written from memory and have not been
checked against a released pixel-task checkpoint; ``load_model`` reports every
key that does not match.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from pipeline.model.config import ModelConfig
from pipeline.model.patch_embed import wavelength_embedding

UPSAMPLE_FACTORS = (16, 8, 4, 2)
POOL_SCALES = (1, 2, 3, 6)
PIXEL_SKIP_KEY = "pixel_skip.generator.2.weight"
"""State-dict key whose first dimension is the pixel skip's width."""
_PIXEL_SKIP_HIDDEN = 64


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


def _upsample_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class PyramidPooling(nn.ModuleList):
    """Pooled context at several grid sizes, each projected by a 1x1 conv."""

    def __init__(self, in_channels: int, out_channels: int, pool_scales: tuple[int, ...] = POOL_SCALES) -> None:
        super().__init__(
            nn.Sequential(nn.AdaptiveMaxPool2d(scale), nn.Conv2d(in_channels, out_channels, kernel_size=1))
            for scale in pool_scales
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        size = (x.shape[-2], x.shape[-1])
        return [_upsample_to(branch(x), size) for branch in self]


class PPMHead(nn.Module):
    """Pyramid pooling concatenated with its input and fused by ``final``."""

    def __init__(self, in_channels: int, out_channels: int, pool_scales: tuple[int, ...] = POOL_SCALES) -> None:
        super().__init__()
        self.psp_modules = PyramidPooling(in_channels, out_channels, pool_scales)
        self.final = _conv_bn_relu(in_channels + len(pool_scales) * out_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.psp_modules(x)
        return self.final(torch.cat([*pooled, x], dim=1))


class FPNDecoder(nn.Module):
    """Top-down FPN over the four branch outputs, fused at the finest level."""

    def __init__(self, channels: int, out_channels: int) -> None:
        super().__init__()
        self.PPMHead = PPMHead(channels, out_channels)
        self.Conv_fuse1 = _conv_bn_relu(channels // 2, out_channels)
        self.Conv_fuse1_ = _conv_bn_relu(out_channels, out_channels)
        self.Conv_fuse2 = _conv_bn_relu(channels // 4, out_channels)
        self.Conv_fuse2_ = _conv_bn_relu(out_channels, out_channels)
        self.Conv_fuse3 = _conv_bn_relu(channels // 8, out_channels)
        self.Conv_fuse3_ = _conv_bn_relu(out_channels, out_channels)
        self.fuse_all = _conv_bn_relu(out_channels * 4, out_channels)
        self.conv_x1 = nn.Conv2d(out_channels, out_channels, kernel_size=1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Fuse branch outputs ordered finest to coarsest into ``(B, F, 16h, 16w)``."""
        level1 = self.PPMHead(features[3])
        top_down = _upsample_to(level1, tuple(features[2].shape[-2:]))
        level2 = self.Conv_fuse1_(self.conv_x1(top_down) + self.Conv_fuse1(features[2]))

        top_down = _upsample_to(level2, tuple(features[1].shape[-2:]))
        level3 = self.Conv_fuse2_(top_down + self.Conv_fuse2(features[1]))

        top_down = _upsample_to(level3, tuple(features[0].shape[-2:]))
        level4 = self.Conv_fuse3_(top_down + self.Conv_fuse3(features[0]))

        return self.fuse_levels([level1, level2, level3, level4])

    def fuse_levels(self, levels: list[torch.Tensor]) -> torch.Tensor:
        """Apply ``fuse_all`` to the four levels upsampled to the finest one.

        The 1x1 convolution is applied to each coarse level before upsampling
        and the results summed. This equals convolving the concatenation
        after upsampling, because bilinear weights sum to one and a 1x1
        convolution is linear per pixel, but costs a fraction of it.
        """
        conv, norm, act = self.fuse_all[0], self.fuse_all[1], self.fuse_all[2]
        size = (levels[-1].shape[-2], levels[-1].shape[-1])
        weights = conv.weight.split(levels[0].shape[1], dim=1)
        fused = F.conv2d(levels[-1], weights[-1], conv.bias)
        for level, weight in zip(levels[:-1], weights[:-1], strict=True):
            fused = fused + _upsample_to(F.conv2d(level, weight), size)
        return act(norm(fused))


class SpectralPixelSkip(nn.Module):
    """Full-resolution features of each pixel's spectrum, for any band set.

    The ViT splits a tile into patches of ``p`` pixels, so with the reference
    head every output detail comes from the token grid upsampled ``p``
    fold. Thin cloud edges and single-pixel features need the pixels
    themselves. This path gives each pixel ``S`` features. A 1x1 projection of
    its bands, averaged over the bands, has weights generated from the band
    wavelengths: DOFA's idea at patch size 1, so one model still takes any
    band set. GELU and a 1x1 convolution to the decoder width follow.
    The head adds them to the decoder output at the tile's pixel size before
    ``cls_seg``.

    Keys: ``generator.0`` and ``generator.2`` (wavelength embedding -> hidden
    -> ``S`` weights per band), ``bias`` (``S``), ``project`` (``S`` -> decoder
    width) and ``decoder`` (1x1 conv on the decoder output).
    """

    def __init__(self, wavelength_dim: int, channels: int, out_channels: int) -> None:
        super().__init__()
        self.wavelength_dim = wavelength_dim
        self.generator = nn.Sequential(
            nn.Linear(wavelength_dim, _PIXEL_SKIP_HIDDEN), nn.GELU(), nn.Linear(_PIXEL_SKIP_HIDDEN, channels)
        )
        self.bias = nn.Parameter(torch.zeros(channels))
        self.project = nn.Conv2d(channels, out_channels, kernel_size=1)
        self.decoder = nn.Conv2d(out_channels, out_channels, kernel_size=1)

    def band_weights(self, wavelengths_um: Sequence[float], device: torch.device) -> torch.Tensor:
        """Return the ``(S, C, 1, 1)`` projection of ``C`` bands, already divided by ``C``."""
        wavelengths = torch.as_tensor(list(wavelengths_um), dtype=torch.float32, device=device)
        weights = self.generator(wavelength_embedding(wavelengths, self.wavelength_dim).to(self.bias.dtype))
        return (weights / len(wavelengths)).transpose(0, 1)[:, :, None, None]

    def forward(
        self, decoded: torch.Tensor, pixels: torch.Tensor, wavelengths_um: Sequence[float]
    ) -> torch.Tensor:
        """Fuse decoder features ``(B, F, h', w')`` with the pixels ``(B, C, H, W)`` into ``(B, F, H, W)``."""
        size = (pixels.shape[-2], pixels.shape[-1])
        weights = self.band_weights(wavelengths_um, pixels.device).to(pixels.dtype)
        spectral = F.gelu(F.conv2d(pixels, weights, self.bias.to(pixels.dtype)))
        # The 1x1 convolution commutes with the bilinear resize, so it runs at the smaller size.
        decoded = _upsample_to(self.decoder(decoded), size)
        return F.gelu(decoded + self.project(spectral))


def _branch(embed_dim: int, channels: int, factor: int, norm_groups: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(embed_dim, channels, kernel_size=1),
        nn.GroupNorm(math.gcd(norm_groups, channels), channels),
        nn.GELU(),
        nn.ConvTranspose2d(channels, channels, kernel_size=factor, stride=factor),
    )


class UPerNetHead(nn.Module):
    """Dense head: token map ``(B, D, h, w)`` to logits ``(B, K, H, W)``."""

    def _single_channel_groups(self) -> bool:
        norms = [branch[1] for branch in (self.conv0, self.conv1, self.conv2, self.conv3)]
        return any(norm.num_groups == norm.num_channels for norm in norms)

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        widths = config.branch_channels
        groups = config.norm_groups
        self.conv0 = _branch(config.embed_dim, widths[0], UPSAMPLE_FACTORS[0], groups)
        self.conv1 = _branch(config.embed_dim, widths[1], UPSAMPLE_FACTORS[1], groups)
        self.conv2 = _branch(config.embed_dim, widths[2], UPSAMPLE_FACTORS[2], groups)
        self.conv3 = _branch(config.embed_dim, widths[3], UPSAMPLE_FACTORS[3], groups)
        self.decoder = FPNDecoder(config.decoder_channels, config.decoder_fpn_channels)
        self.cls_seg = nn.Sequential(
            nn.Conv2d(config.decoder_fpn_channels, config.num_classes, kernel_size=3, padding=1)
        )
        self.pixel_skip: SpectralPixelSkip | None = None
        if config.pixel_skip_channels:
            self.pixel_skip = SpectralPixelSkip(
                config.wavelength_dim, config.pixel_skip_channels, config.decoder_fpn_channels
            )

    def inference_copy(self, dtype: torch.dtype, device: torch.device) -> UPerNetHead:
        """Return an eval-mode copy with each BatchNorm folded into its conv, in channels-last layout.

        The copy gives the same logits up to rounding and runs about twice as
        fast on the CPU, because oneDNN convolutions skip the layout reorders
        and the BatchNorm passes over full-resolution maps disappear.
        """
        fused = copy.deepcopy(self).eval()
        for module in fused.modules():
            if isinstance(module, nn.Sequential) and len(module) >= 2 and isinstance(module[1], nn.BatchNorm2d):
                module[0] = fuse_conv_bn_eval(module[0], module[1])
                module[1] = nn.Identity()
        for parameter in fused.parameters():
            parameter.requires_grad_(False)
        return fused.to(device=device, dtype=dtype, memory_format=torch.channels_last)

    def forward(
        self,
        tokens: torch.Tensor,
        output_size: tuple[int, int],
        *,
        pixels: torch.Tensor | None = None,
        wavelengths_um: Sequence[float] | None = None,
    ) -> torch.Tensor:
        """Return logits ``(B, K, *output_size)`` for a token map ``(B, D, h, w)``.

        A head with a pixel skip also needs the input ``pixels`` ``(B, C,
        *output_size)``, as the model saw them, and their ``wavelengths_um``.
        """
        if tokens.shape[-2] * tokens.shape[-1] == 1 and self._single_channel_groups():
            raise ValueError(
                f"The upernet head cannot normalise a 1x1 token grid: its GroupNorm has one channel per group "
                f"in some branch. Use an input of at least 2 tokens per tile (output size {tuple(output_size)})."
            )
        features = [self.conv0(tokens), self.conv1(tokens), self.conv2(tokens), self.conv3(tokens)]
        decoded = self.decoder(features)
        if self.pixel_skip is not None:
            if pixels is None or wavelengths_um is None:
                raise ValueError(
                    "missing pixels: this upernet head has a pixel skip, so pass pixels= and wavelengths_um="
                )
            decoded = self.pixel_skip(decoded, pixels, wavelengths_um)
        logits = self.cls_seg(decoded)
        if tuple(logits.shape[-2:]) != tuple(output_size):
            logits = F.interpolate(logits, size=output_size, mode="bilinear", align_corners=False)
        return logits
