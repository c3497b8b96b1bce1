"""Checks of model inputs: tensor shape, wavelengths in micrometres, patch size."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

# Optical and thermal remote-sensing bands lie between about 0.3 and 15 µm.
# A value of 100 or more is read as nanometres (443 for Sentinel-2 B01).
MIN_WAVELENGTH_UM = 0.1
MAX_WAVELENGTH_UM = 30.0
NANOMETRE_THRESHOLD = 100.0


def token_grid(size_px: tuple[int, int], patch_size: int) -> tuple[int, int]:
    """Return the token grid ``(h, w)`` of an input of ``(H, W)`` pixels.

    The patch convolution has stride ``p`` and DOFA's padding of 1, so a
    side of ``S`` pixels gives ``(S + 2 - p) // p + 1`` tokens.
    """
    return tuple((side + 2 - patch_size) // patch_size + 1 for side in size_px)  # type: ignore[return-value]


def validate_wavelengths(wavelengths_um: Sequence[float], num_channels: int | None = None) -> None:
    """Raise ``ValueError`` unless ``wavelengths_um`` contains one plausible µm value per channel."""
    if isinstance(wavelengths_um, (str, bytes)) or not isinstance(wavelengths_um, Sequence | torch.Tensor):
        raise TypeError(
            f"wavelengths_um must be a sequence of floats in micrometres, got {type(wavelengths_um).__name__}."
        )
    values = [float(w) for w in wavelengths_um]
    if not values:
        raise ValueError("wavelengths_um is empty; pass one centre wavelength in micrometres per input channel.")
    if num_channels is not None and len(values) != num_channels:
        raise ValueError(
            f"Got {len(values)} wavelengths for an input with {num_channels} channels; "
            "pass exactly one centre wavelength (micrometres) per channel, in channel order."
        )
    for index, value in enumerate(values):
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"wavelengths_um[{index}] = {value!r} is not a positive finite wavelength in micrometres.")
        if value >= NANOMETRE_THRESHOLD:
            raise ValueError(
                f"wavelengths_um[{index}] = {value:g} looks like nanometres; wavelengths must be in "
                f"micrometres (e.g. {value / 1000:g} for {value:g} nm). Divide by 1000."
            )
        if not MIN_WAVELENGTH_UM <= value <= MAX_WAVELENGTH_UM:
            raise ValueError(
                f"wavelengths_um[{index}] = {value:g} µm is outside the supported range "
                f"{MIN_WAVELENGTH_UM}-{MAX_WAVELENGTH_UM} µm; check the band's unit and value."
            )


def validate_patch_size(patch_size: int, size_px: tuple[int, int]) -> None:
    """Raise unless ``patch_size`` is a positive integer no larger than the input."""
    if isinstance(patch_size, bool) or not isinstance(patch_size, int):
        raise TypeError(f"patch_size must be an int (pixels), got {patch_size!r} of type {type(patch_size).__name__}.")
    if patch_size < 1:
        raise ValueError(f"patch_size must be a positive number of pixels, got {patch_size}.")
    if patch_size > min(size_px):
        raise ValueError(
            f"patch_size={patch_size} is larger than the input of {size_px[0]}x{size_px[1]} pixels; "
            "use a patch size no larger than the input's smaller side, or a larger input."
        )
    grid = token_grid(size_px, patch_size)
    if min(grid) < 1:
        raise ValueError(
            f"An input of {size_px[0]}x{size_px[1]} pixels at patch_size={patch_size} gives a token grid of "
            f"{grid}; at least one token per side is needed. Use a smaller patch size."
        )


def validate_inputs(x: torch.Tensor, wavelengths_um: Sequence[float], patch_size: int) -> None:
    """Validate a model call: ``x`` ``(B, C, H, W)`` floating, wavelengths, patch size."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape (B, C, H, W), got {type(x).__name__}.")
    if x.dim() != 4:
        raise ValueError(f"x must have shape (B, C, H, W), got shape {tuple(x.shape)}; add a batch dimension with x[None].")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}; convert it with x.float().")
    validate_wavelengths(wavelengths_um, x.shape[1])
    validate_patch_size(patch_size, (x.shape[-2], x.shape[-1]))
