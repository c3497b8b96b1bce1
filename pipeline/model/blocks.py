"""Pre-norm ViT blocks with timm's parameter names (``norm1``, ``attn.qkv``, ...).

For inference a block may be given :class:`~pipeline.model.linear.PreparedLinear`
copies of its linear layers (``linears``, keyed by layer name). The
LayerNorms and the residual stream then stay float32 while the matrix
products run in the prepared layers' dtype.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.model.linear import PreparedLinear

PreparedLinears = Mapping[str, PreparedLinear]


class Attention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention``."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, linears: PreparedLinears | None = None) -> torch.Tensor:
        batch, length, dim = x.shape
        qkv = self.qkv(x) if linears is None else linears["attn.qkv"](x)
        qkv = qkv.reshape(batch, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        attended = attended.transpose(1, 2).reshape(batch, length, dim)
        return self.proj(attended) if linears is None else linears["attn.proj"](attended)


class Mlp(nn.Module):
    """Two-layer MLP with exact GELU."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor, linears: PreparedLinears | None = None) -> torch.Tensor:
        if linears is None:
            return self.fc2(F.gelu(self.fc1(x)))
        return linears["mlp.fc2"](linears["mlp.fc1"](x))  # fc1 carries the fused GELU


class Block(nn.Module):
    """``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, num_heads: int, hidden_dim: int, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, hidden_dim)

    def forward(self, x: torch.Tensor, linears: PreparedLinears | None = None) -> torch.Tensor:
        """Apply the block to ``(B, N, D)`` tokens, through ``linears`` when given."""
        x = x + self.attn(self.norm1(x), linears).to(x.dtype)
        return x + self.mlp(self.norm2(x), linears).to(x.dtype)

    def prepare_linears(self, dtype: torch.dtype, device: torch.device) -> dict[str, PreparedLinear]:
        """Return inference copies of the linear layers in ``dtype`` on ``device``."""
        return {
            "attn.qkv": PreparedLinear(self.attn.qkv, dtype, device),
            "attn.proj": PreparedLinear(self.attn.proj, dtype, device),
            "mlp.fc1": PreparedLinear(self.mlp.fc1, dtype, device, activation="gelu"),
            "mlp.fc2": PreparedLinear(self.mlp.fc2, dtype, device),
        }
