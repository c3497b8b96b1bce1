"""Pre-norm ViT blocks with timm's parameter names (``norm1``, ``attn.qkv``, ...).

Each block may be given low-precision copies of its linear layers' weights
(``weights``, keyed like its state dict). The LayerNorms and the residual
stream then stay float32 while the matrix products run in the weights' dtype.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

LINEAR_LAYERS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


def _linear(x: torch.Tensor, layer: nn.Linear, weights: Mapping[str, torch.Tensor] | None, name: str) -> torch.Tensor:
    if weights is None:
        return layer(x)
    weight = weights[f"{name}.weight"]
    return F.linear(x.to(weight.dtype), weight, weights[f"{name}.bias"])


class Attention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention``."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, weights: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        batch, length, dim = x.shape
        qkv = _linear(x, self.qkv, weights, "attn.qkv")
        qkv = qkv.reshape(batch, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return _linear(attended.transpose(1, 2).reshape(batch, length, dim), self.proj, weights, "attn.proj")


class Mlp(nn.Module):
    """Two-layer MLP with exact GELU."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor, weights: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        return _linear(F.gelu(_linear(x, self.fc1, weights, "mlp.fc1")), self.fc2, weights, "mlp.fc2")


class Block(nn.Module):
    """``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, num_heads: int, hidden_dim: int, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, hidden_dim)

    def forward(self, x: torch.Tensor, weights: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Apply the block to ``(B, N, D)`` tokens; ``weights`` are optional low-precision linear weights."""
        x = x + self.attn(self.norm1(x), weights).to(x.dtype)
        return x + self.mlp(self.norm2(x), weights).to(x.dtype)

    def cast_linear_weights(self, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
        """Return copies of the linear layers' weights and biases in ``dtype`` on ``device``."""
        state = {}
        for name in LINEAR_LAYERS:
            layer = self.get_submodule(name)
            state[f"{name}.weight"] = layer.weight.detach().to(device=device, dtype=dtype)
            state[f"{name}.bias"] = layer.bias.detach().to(device=device, dtype=dtype)
        return state
