"""Wavelength-conditioned dynamic patch embedding of DOFA, with PI-resize.

The patch-projection kernel is not a stored weight: it is generated from the
centre wavelengths of the input bands, so one model takes any band set. A
generated ``s x s`` kernel (``s = 16`` for DOFA) is PI-resized to the
requested patch size ``p``. Parameter names follow DOFA's ``patch_embed.*``
keys so that its checkpoints load unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.model.cache import TensorCache, weights_version
from pipeline.model.config import ModelConfig
from pipeline.model.pi_resize import pi_resize_kernel, pinv_matrix

# DOFA multiplies the generated kernel and bias by this constant.
KERNEL_SCALE = 0.01
# Generated kernels kept per model: each is D x C x p x p floats (about 9 MB
# for ViT-Base with 12 bands at p = 16, 59 MB at p = 40).
KERNEL_CACHE_SIZE = 16


def wavelength_embedding(wavelengths_um: torch.Tensor, dim: int) -> torch.Tensor:
    """Embed wavelengths with DOFA's sin-cos code of ``wavelength_nm``.

    Parameters
    ----------
    wavelengths_um
        ``(C,)`` centre wavelengths in micrometres.
    dim
        Embedding width; the first ``dim / 2`` columns are sines and the rest
        cosines, at frequencies ``10000 ** (-k / (dim / 2))``.

    Returns
    -------
    torch.Tensor
        ``(C, dim)`` float32 embedding.
    """
    half = dim // 2
    omega = torch.arange(half, dtype=torch.float32, device=wavelengths_um.device) / half
    omega = 1.0 / 10000**omega
    angles = (wavelengths_um.to(torch.float32) * 1000).reshape(-1, 1) * omega.reshape(1, -1)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class FCResLayer(nn.Module):
    """Residual MLP ``x + relu(w2(relu(w1(x))))`` on wavelength embeddings."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, dim)
        self.w2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.relu(self.w2(F.relu(self.w1(x))))


class _GeneratorAttention(nn.Module):
    """Self-attention with ``nn.MultiheadAttention``'s parameter names, unbatched."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length, dim = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        qkv = qkv.reshape(length, 3, self.num_heads, dim // self.num_heads).permute(1, 2, 0, 3)
        attended = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.out_proj(attended.transpose(0, 1).reshape(length, dim))


class _GeneratorLayer(nn.Module):
    """Post-norm transformer layer, as ``nn.TransformerEncoderLayer(activation="gelu")``."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int) -> None:
        super().__init__()
        self.self_attn = _GeneratorAttention(dim, num_heads)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        # nn.TransformerEncoderLayer's default LayerNorm epsilon.
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.self_attn(x))
        return self.norm2(x + self.linear2(F.gelu(self.linear1(x))))


class _GeneratorEncoder(nn.Module):
    def __init__(self, dim: int, num_heads: int, ffn_dim: int, num_layers: int = 1) -> None:
        super().__init__()
        self.layers = nn.ModuleList([_GeneratorLayer(dim, num_heads, ffn_dim) for _ in range(num_layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class TransformerWeightGenerator(nn.Module):
    """Generate per-band kernels and a bias from wavelength embeddings.

    One transformer layer runs over ``[weight tokens, band tokens, bias
    token]``. The band outputs plus the band embeddings go through
    ``fc_weight`` to one flattened ``s x s x D`` kernel per band, and the bias
    token output goes through ``fc_bias`` to ``D`` values.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        dim = config.wavelength_dim
        self.transformer_encoder = _GeneratorEncoder(dim, config.generator_heads, config.generator_ffn_dim)
        self.fc_weight = nn.Linear(dim, config.kernel_size * config.kernel_size * config.embed_dim)
        self.fc_bias = nn.Linear(dim, config.embed_dim)
        self.weight_tokens = nn.Parameter(torch.empty(config.num_weight_tokens, dim))
        self.bias_token = nn.Parameter(torch.empty(1, dim))

    def forward(self, band_embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = torch.cat([self.weight_tokens, band_embeddings, self.bias_token], dim=0)
        encoded = self.transformer_encoder(tokens)
        num_weight_tokens = self.weight_tokens.shape[0]
        weights = self.fc_weight(encoded[num_weight_tokens:-1] + band_embeddings)
        bias = self.fc_bias(encoded[-1])
        return weights, bias


class DynamicPatchEmbed(nn.Module):
    """Patch embedding whose kernel is generated from band wavelengths.

    ``forward`` is a convolution with stride ``p`` and DOFA's padding of 1, so
    an input side of ``S`` pixels gives ``(S + 2 - p) // p + 1`` tokens.

    Generated kernels are cached per (wavelengths, patch size, dtype, device,
    weight versions) while no gradient flows into the generator. The cache is
    the only state that ``forward`` touches, and it is thread-safe.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed_dim = config.embed_dim
        self.kernel_size = config.kernel_size
        self.wavelength_dim = config.wavelength_dim
        self.weight_generator = TransformerWeightGenerator(config)
        self.fclayer = FCResLayer(config.wavelength_dim)
        self._kernel_cache: TensorCache[tuple[torch.Tensor, torch.Tensor]] = TensorCache(KERNEL_CACHE_SIZE)

    def generate_kernel(
        self,
        wavelengths_um: Sequence[float],
        patch_size: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Generate the projection kernel ``(D, C, p, p)`` and bias ``(D,)``.

        The generator always runs in float32; the result is cast to ``dtype``.
        """
        device = torch.device(device) if device is not None else self.weight_generator.bias_token.device
        waves = torch.as_tensor(list(wavelengths_um), dtype=torch.float32, device=self.weight_generator.bias_token.device)
        embeddings = self.fclayer(wavelength_embedding(waves, self.wavelength_dim))
        weights, bias = self.weight_generator(embeddings)

        size = self.kernel_size
        kernel = weights.reshape(len(waves), size, size, self.embed_dim).permute(3, 0, 1, 2) * KERNEL_SCALE
        bias = bias.reshape(self.embed_dim) * KERNEL_SCALE
        if patch_size != size:
            pinv = pinv_matrix(size, patch_size, dtype=kernel.dtype, device=kernel.device)
            kernel = pi_resize_kernel(kernel, patch_size, pinv)
        return kernel.to(device=device, dtype=dtype).contiguous(), bias.to(device=device, dtype=dtype)

    def _needs_grad(self) -> bool:
        return torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())

    def cached_kernel(
        self,
        wavelengths_um: Sequence[float],
        patch_size: int,
        *,
        dtype: torch.dtype,
        device: torch.device,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the kernel and bias from the cache, generating them on a miss.

        The cache is bypassed while gradients flow into the generator (training).
        """
        if self._needs_grad():
            return self.generate_kernel(wavelengths_um, patch_size, dtype=dtype, device=device)
        key = (
            tuple(float(w) for w in wavelengths_um),
            patch_size,
            dtype,
            device,
            weights_version(self.parameters()),
        )
        return self._kernel_cache.get_or_compute(
            key, lambda: self.generate_kernel(wavelengths_um, patch_size, dtype=dtype, device=device)
        )

    def clear_cache(self) -> None:
        """Drop all cached kernels (stale ones are never used, so this only frees memory)."""
        self._kernel_cache.clear()

    def forward(self, x: torch.Tensor, wavelengths_um: Sequence[float], patch_size: int) -> torch.Tensor:
        """Project ``x`` ``(B, C, H, W)`` to tokens ``(B, D, h, w)`` in ``x``'s dtype."""
        kernel, bias = self.cached_kernel(wavelengths_um, patch_size, dtype=x.dtype, device=x.device)
        return F.conv2d(x, kernel, bias, stride=patch_size, padding=1)
