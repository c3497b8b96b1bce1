"""Numeric precision of inference: exact float32 or bfloat16 autocast."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from typing import Literal, get_args

import torch

logger = logging.getLogger(__name__)

Precision = Literal["float32", "bfloat16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
AUTO_PRECISION = "auto"
"""A requested precision that :func:`precision_for_device` resolves per device."""


@functools.lru_cache(maxsize=None)
def cpu_supports_bfloat16() -> bool:
    """Return whether this CPU has native bfloat16 matrix instructions (AVX-512 BF16 or AMX).

    Without them PyTorch emulates bfloat16 matmuls, which is slower than
    float32, so bfloat16 autocast would only lose accuracy.
    """
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def bfloat16_available(device: torch.device | str) -> bool:
    """Return whether bfloat16 autocast runs at native speed on ``device``."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_supports_bfloat16()
    return False


def check_precision(precision: str, device: torch.device | str) -> None:
    """Raise if ``precision`` is unknown or bfloat16 is not supported on ``device``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
    if precision == "bfloat16" and not bfloat16_available(device):
        raise ValueError(
            f"precision='bfloat16' is not supported at native speed on device {str(device)!r} "
            "(needs a CUDA GPU with bfloat16 or a CPU with AVX-512 BF16 / AMX); use precision='float32'."
        )


def resolve_precision(precision: Precision | None, device: torch.device | str) -> Precision:
    """Return the precision to run at: ``precision`` itself, or for ``None`` the enclosing autocast's.

    ``None`` gives ``"bfloat16"`` inside an enabled ``torch.autocast`` region
    with ``dtype=torch.bfloat16`` for ``device``'s type, else ``"float32"``.
    An explicit precision is checked with :func:`check_precision`.
    """
    device = torch.device(device)
    if precision is not None:
        check_precision(precision, device)
        return precision
    device_type = device.type if device.type in ("cuda", "cpu") else "cpu"
    if torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == torch.bfloat16:
        return "bfloat16"
    return "float32"


def precision_for_device(requested: str, device: torch.device | str) -> Precision:
    """Return the precision to run at on ``device`` for a requested one.

    ``"auto"`` gives bfloat16 autocast on a CUDA device that supports it and
    exact float32 elsewhere, CPUs included. On a CPU, bfloat16 ran the model
    only about 1.4 times faster in the model benchmark, and it changes classes
    near ties. Another value is checked with :func:`check_precision` and returned.
    """
    device = torch.device(device)
    if requested == AUTO_PRECISION:
        return "bfloat16" if device.type == "cuda" and bfloat16_available(device) else "float32"
    check_precision(requested, device)
    return requested  # type: ignore[return-value]


@contextlib.contextmanager
def autocast(device: torch.device | str, precision: Precision = "float32", *, check: bool = True) -> Iterator[None]:
    """Run the enclosed code at ``precision`` on ``device``.

    ``"float32"`` disables any enclosing autocast so that results are exact;
    ``"bfloat16"`` enables bfloat16 autocast on CUDA or on a CPU that
    supports it (see :func:`bfloat16_available`).

    Raises
    ------
    ValueError
        With ``check=True``: for an unknown precision, or bfloat16 on a device
        without native support.
    """
    device = torch.device(device)
    if check:
        check_precision(precision, device)
    device_type = device.type if device.type in ("cuda", "cpu") else "cpu"
    enabled = precision == "bfloat16"
    with torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=enabled):
        yield
