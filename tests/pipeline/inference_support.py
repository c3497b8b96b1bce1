"""Input cubes and model cards for the inference tests.

``write_cube`` writes an input cube in the layout the ingest stage produces
(``reflectance`` (band, y, x) int16 x 10000, fill -32768, ``wavelength_um``,
``gsd_m``, CRS in ``spatial_ref``). The cards are real model cards in all
but their weights: :class:`PointwiseCard` applies a fixed per-pixel linear map
(its correct blended output is known everywhere), :class:`TinyViTCard` is a
depth-2, 64-wide ViT segmenter whose output depends on the whole tile.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
import time
from pathlib import Path

import cloudpickle
import numpy as np
import torch
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from torch import nn

from pipeline import layout

# Workers unpickle these cards by value, so they need not import this module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

WAVELENGTHS_UM = (0.49, 0.56, 0.665, 0.842)
GSD_M = 10.0


def scene_values(height: int, width: int, bands: int = len(WAVELENGTHS_UM), seed: int = 0) -> np.ndarray:
    """Return smooth-plus-noise int16 reflectance x 10000, shape ``(bands, height, width)``."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    values = []
    for band in range(bands):
        base = 1500 + 1000 * np.sin(ys / (7.0 + band)) * np.cos(xs / (11.0 + 2 * band))
        values.append(base + rng.normal(0, 300, size=(height, width)))
    return np.clip(np.stack(values), 0, 10000).astype(np.int16)


def write_cube(path: Path, values: np.ndarray, *, chunk_px: int = 64, gsd_m: float = GSD_M,
               wavelengths_um: tuple[float, ...] = WAVELENGTHS_UM) -> str:
    """Write ``values`` (band, y, x) int16 as an input cube at ``path``; return its path as a string."""
    bands, height, width = values.shape
    x = 441120.0 + gsd_m * (np.arange(width) + 0.5)
    y = 4174860.0 - gsd_m * (np.arange(height) + 0.5)
    reflectance = xr.DataArray(
        values, dims=("band", "y", "x"),
        coords={"band": np.arange(bands), layout.WAVELENGTH_COORD: ("band", np.asarray(wavelengths_um[:bands])),
                "y": y, "x": x},
        attrs={"gsd_m": gsd_m},
    )
    dataset = xr.Dataset({layout.REFLECTANCE_VAR: reflectance}, attrs={"gsd_m": gsd_m})
    dataset = dataset.rio.write_crs("EPSG:32618").set_coords("spatial_ref")
    dataset[layout.REFLECTANCE_VAR].attrs["grid_mapping"] = "spatial_ref"
    encoding = {layout.REFLECTANCE_VAR: {"chunks": (bands, chunk_px, chunk_px), "_FillValue": layout.REFLECTANCE_FILL}}
    dataset.to_zarr(path, mode="w", zarr_format=3, encoding=encoding, consolidated=False)
    return str(path)


class PointwiseLinear(nn.Module):
    """Per-pixel linear map ``logits[c] = bias[c] + sum_k weight[c, k] * x[k]``, band by band.

    Written as elementwise multiply-adds in a fixed order so the same pixel
    gives the same bits whatever the tensor shape.
    """

    def __init__(self, weight: np.ndarray, bias: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("weight", torch.as_tensor(weight, dtype=torch.float32))
        self.register_buffer("bias", torch.as_tensor(bias, dtype=torch.float32))

    def forward(self, x: torch.Tensor, wavelengths_um=None, patch_size=None) -> torch.Tensor:
        return pointwise_logits(x, self.weight, self.bias)


def pointwise_logits(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Apply the per-pixel linear map to ``(B, bands, H, W)`` reflectance."""
    classes, bands = weight.shape
    out = []
    for c in range(classes):
        acc = torch.full_like(x[:, 0], float(bias[c]))
        for k in range(bands):
            acc = acc + weight[c, k] * x[:, k]
        out.append(acc)
    return torch.stack(out, dim=1)


@dataclasses.dataclass(frozen=True)
class PointwiseCard:
    """Model card of a :class:`PointwiseLinear` model (no checkpoint file)."""

    name: str = "pointwise-test"
    task: str = "landcover"
    classes: tuple[str, ...] = ("water", "tree cover", "cropland")
    reference_gsd_m: float = 10.0
    reference_patch_size: int = 4
    token_grid: int = 8
    weight: tuple[tuple[float, ...], ...] = ((4.0, -2.0, 1.0, -3.0), (-1.0, 3.0, -2.0, 2.0), (0.5, 0.5, 2.0, -1.0))
    bias: tuple[float, ...] = (0.1, -0.2, 0.0)

    @property
    def class_names(self) -> list[str]:
        return list(self.classes)

    def fingerprint(self) -> str:
        return hashlib.sha256(repr(self).encode()).hexdigest()

    def prepare_input(self, reflectance: torch.Tensor, wavelengths_um) -> torch.Tensor:
        return reflectance

    def load_model(self, device: torch.device) -> nn.Module:
        return PointwiseLinear(np.asarray(self.weight), np.asarray(self.bias))


class TinySegViT(nn.Module):
    """Depth-2, 64-wide ViT segmenter: patch conv, transformer, per-token head, pixel shuffle."""

    def __init__(self, bands: int, classes: int, patch: int, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.patch = patch
        self.classes = classes
        self.embed = nn.Conv2d(bands, 64, patch, stride=patch)
        layer = nn.TransformerEncoderLayer(64, 2, 128, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(64, classes * patch * patch)
        self.shuffle = nn.PixelShuffle(patch)

    def forward(self, x: torch.Tensor, wavelengths_um=None, patch_size=None) -> torch.Tensor:
        tokens = self.embed(x * 4.0)
        batch, _, rows, cols = tokens.shape
        tokens = self.encoder(tokens.flatten(2).transpose(1, 2))
        logits = self.head(tokens).transpose(1, 2).reshape(batch, -1, rows, cols)
        return self.shuffle(logits)


@dataclasses.dataclass(frozen=True)
class TinyViTCard:
    """Model card of a seeded :class:`TinySegViT`; ``load_delay_s`` slows loading (fault tests)."""

    name: str = "tiny-vit-test"
    task: str = "landcover"
    classes: tuple[str, ...] = ("water", "tree cover", "cropland", "built-up")
    reference_gsd_m: float = 10.0
    reference_patch_size: int = 4
    token_grid: int = 8
    bands: int = len(WAVELENGTHS_UM)
    seed: int = 0
    load_delay_s: float = 0.0
    call_delay_s: float = 0.0
    call_log: str | None = None
    max_batch: int | None = None

    @property
    def class_names(self) -> list[str]:
        return list(self.classes)

    def fingerprint(self) -> str:
        return hashlib.sha256(repr(self).encode()).hexdigest()

    def prepare_input(self, reflectance: torch.Tensor, wavelengths_um) -> torch.Tensor:
        return reflectance

    def load_model(self, device: torch.device) -> nn.Module:
        time.sleep(self.load_delay_s)
        model = TinySegViT(self.bands, len(self.classes), self.reference_patch_size, self.seed)
        if self.max_batch is not None:
            model = _MemoryLimited(model, self.max_batch)
        return _Slowed(model, self.call_delay_s, self.call_log) if self.call_delay_s or self.call_log else model


class _MemoryLimited(nn.Module):
    """Wraps a model: a batch larger than ``max_batch`` raises CUDA out-of-memory, as on a small GPU."""

    def __init__(self, model: nn.Module, max_batch: int) -> None:
        super().__init__()
        self.model = model
        self.max_batch = max_batch

    def forward(self, x, wavelengths_um=None, patch_size=None):
        if x.shape[0] > self.max_batch:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory: batch of {x.shape[0]} tiles")
        return self.model(x, wavelengths_um, patch_size)


class _Slowed(nn.Module):
    """Wraps a model: each call sleeps ``delay_s`` and appends a line to ``log``.

    The line contains the process id and how many model tasks (keys starting
    with ``predict-``) the Dask worker was executing at the time of the call.
    """

    def __init__(self, model: nn.Module, delay_s: float, log: str | None) -> None:
        super().__init__()
        self.model = model
        self.delay_s = delay_s
        self.log = log

    def forward(self, x, wavelengths_um=None, patch_size=None):
        from distributed import get_worker

        executing = [task for task in get_worker().state.executing if str(task.key).startswith("predict-")]
        out = self.model(x, wavelengths_um, patch_size)
        time.sleep(self.delay_s)
        if self.log:
            with open(self.log, "a") as handle:
                handle.write(f"{os.getpid()} {len(executing)}\n")
        return out
