"""PI-resize of patch-embedding kernels (FlexiViT, Beyer et al. 2023).

A kernel ``k`` learned for ``s x s`` patches is mapped to ``p x p`` patches by
``k_p = pinv(M) @ k``, where row ``i`` of ``M`` is the bicubic (antialiased)
resize of the ``i``-th ``s x s`` basis image to ``p x p``. For upsampling
(``p >= s``) this keeps the token of an upsampled patch unchanged:
``<resize(x), k_p> == <x, k>``.
"""

from __future__ import annotations

import functools
import threading

import torch
import torch.nn.functional as F

_LOCK = threading.Lock()
_DEVICE_CACHE: dict[tuple[int, int, torch.dtype, torch.device], torch.Tensor] = {}


def resize_patch(patches: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Resize square patches ``(..., s, s)`` to ``(..., p, p)``, bicubic with antialiasing."""
    leading = patches.shape[:-2]
    flat = patches.reshape(-1, 1, *patches.shape[-2:])
    resized = F.interpolate(flat, size=(patch_size, patch_size), mode="bicubic", antialias=True, align_corners=False)
    return resized.reshape(*leading, patch_size, patch_size)


@functools.lru_cache(maxsize=64)
def _pinv_cpu(base_size: int, patch_size: int) -> torch.Tensor:
    # All basis images are resized in one batched call: row i of the result is
    # the resize of the i-th one-hot image. The pseudo-inverse is taken in
    # float64 so that the float32 kernel carries no solver noise.
    basis = torch.eye(base_size * base_size, dtype=torch.float64).reshape(-1, base_size, base_size)
    matrix = resize_patch(basis, patch_size).reshape(base_size * base_size, patch_size * patch_size)
    return torch.linalg.pinv(matrix)


def pinv_matrix(
    base_size: int,
    patch_size: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Return the PI-resize matrix ``pinv(M)`` of shape ``(p * p, s * s)``.

    Computed once per ``(s, p)`` in float64 on the CPU and cached, with one
    cached copy per ``(dtype, device)``. Safe to call from several threads.

    Parameters
    ----------
    base_size
        Side ``s`` of the kernels the weights were trained with (16 for DOFA).
    patch_size
        Target side ``p`` in pixels.
    dtype, device
        Where the returned matrix lives.
    """
    if base_size < 1 or patch_size < 1:
        raise ValueError(f"PI-resize sizes must be positive, got base_size={base_size}, patch_size={patch_size}.")
    device = torch.device(device)
    key = (base_size, patch_size, dtype, device)
    cached = _DEVICE_CACHE.get(key)
    if cached is not None:
        return cached
    with _LOCK:
        cached = _DEVICE_CACHE.get(key)
        if cached is None:
            cached = _pinv_cpu(base_size, patch_size).to(device=device, dtype=dtype)
            _DEVICE_CACHE[key] = cached
    return cached


def pi_resize_kernel(kernel: torch.Tensor, patch_size: int, pinv: torch.Tensor | None = None) -> torch.Tensor:
    """PI-resize convolution kernels ``(out, in, s, s)`` to ``(out, in, p, p)``.

    Parameters
    ----------
    kernel
        Square kernels; the last two dimensions are resized.
    patch_size
        Target side ``p`` in pixels. ``p == s`` returns ``kernel`` itself.
    pinv
        The matrix from :func:`pinv_matrix`; looked up in the cache if omitted.
    """
    base_size = kernel.shape[-1]
    if kernel.shape[-2] != base_size:
        raise ValueError(f"PI-resize needs square kernels, got shape {tuple(kernel.shape)}.")
    if patch_size == base_size:
        return kernel
    if pinv is None:
        pinv = pinv_matrix(base_size, patch_size, dtype=kernel.dtype, device=kernel.device)
    flat = kernel.reshape(-1, base_size * base_size)
    resized = flat @ pinv.T
    return resized.reshape(*kernel.shape[:-2], patch_size, patch_size)
