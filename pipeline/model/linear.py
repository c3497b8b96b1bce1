"""Linear layers prepared once for inference: cast, and on CPUs prepacked for oneDNN.

``F.linear`` on the CPU reorders the weight into the GEMM library's blocked
layout on every call, and on AMD CPUs it goes through MKL's slower code path.
A :class:`PreparedLinear` keeps the weight already reordered for oneDNN and
calls its GEMM directly. The results are float32 (or bfloat16) products like
``F.linear``'s, with a different summation order.

NOTE: ``torch.ops.mkldnn._reorder_linear_weight`` and ``_linear_pointwise``
are private PyTorch operators (the ones TorchInductor's CPU backend emits,
present since PyTorch 2.0 and checked with 2.13). Where they are missing, or
off the CPU, :class:`PreparedLinear` falls back to ``F.linear`` on a cast copy.
"""

from __future__ import annotations

import functools
import logging
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

Activation = Literal["none", "gelu"]


@functools.lru_cache(maxsize=1)
def onednn_linear_available() -> bool:
    """Return whether oneDNN's prepacked linear operators work in this PyTorch build."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        weight = torch.randn(4, 8)
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, 2)
        out = torch.ops.mkldnn._linear_pointwise(torch.randn(2, 8), packed, None, "none", [], "")
    except (AttributeError, RuntimeError, NotImplementedError) as error:
        logger.info("oneDNN prepacked linear layers are unavailable (%s); using F.linear", error)
        return False
    return tuple(out.shape) == (2, 4)


class PreparedLinear:
    """Weights of one ``nn.Linear`` (optionally followed by exact GELU) ready for inference.

    Parameters
    ----------
    layer
        The source layer; its weights are copied, so later changes to it are
        not seen (callers key their caches on the weights' versions).
    dtype, device
        Compute dtype and device; inputs are cast to ``dtype``.
    activation
        ``"gelu"`` fuses the exact (erf) GELU after the product.
    """

    def __init__(
        self, layer: nn.Linear, dtype: torch.dtype, device: torch.device, activation: Activation = "none"
    ) -> None:
        self.dtype = dtype
        self.activation = activation
        self.out_features = layer.out_features
        weight = layer.weight.detach().to(device=device, dtype=dtype).contiguous()
        self.bias = None if layer.bias is None else layer.bias.detach().to(device=device, dtype=dtype)
        self.onednn = device.type == "cpu" and onednn_linear_available()
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight, None) if self.onednn else weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``activation(x @ W.T + b)`` in ``dtype`` for ``x`` of shape ``(..., in_features)``."""
        x = x.to(self.dtype)
        if not self.onednn:
            out = F.linear(x, self.weight, self.bias)
            return F.gelu(out) if self.activation == "gelu" else out
        flat = x.reshape(-1, x.shape[-1]).contiguous()
        algorithm = "none" if self.activation == "gelu" else ""
        out = torch.ops.mkldnn._linear_pointwise(flat, self.weight, self.bias, self.activation, [], algorithm)
        return out.reshape(*x.shape[:-1], self.out_features)
