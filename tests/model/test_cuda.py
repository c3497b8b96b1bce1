"""FlexiMo on a CUDA device against the same weights on CPU.

These tests run only where torch finds a CUDA device. On CPU the blocks use
prepacked oneDNN linears; on CUDA they use plain ``F.linear``, so the two
paths are compared here.
"""

from __future__ import annotations

import pytest
import torch

from pipeline.model import MODEL_PRESETS, FlexiMo, build_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device that torch can use")

DEVICE = "cuda"
WAVELENGTHS_UM = [0.49, 0.56, 0.665, 0.842, 1.61]


def _tiny_upernet() -> FlexiMo:
    # Built anew for each device: the same seed gives the same weights, and no caches are shared.
    return build_model(MODEL_PRESETS["tiny_upernet"].replace(num_classes=4), seed=5)


def _inputs(patch_size: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(7)
    return torch.rand(2, len(WAVELENGTHS_UM), 8 * patch_size, 8 * patch_size, generator=generator)


@pytest.mark.parametrize("patch_size", [16, 8, 24])
def test_float32_on_device_matches_cpu(patch_size: int) -> None:
    x = _inputs(patch_size)
    on_cpu, on_device = _tiny_upernet(), _tiny_upernet().to(DEVICE)

    with torch.inference_mode():
        expected = on_cpu(x, wavelengths_um=WAVELENGTHS_UM, patch_size=patch_size)
        got = on_device(x.to(DEVICE), wavelengths_um=WAVELENGTHS_UM, patch_size=patch_size).cpu()

    assert got.shape == expected.shape
    # cuDNN may run convolutions in TF32, which has 11 significant bits.
    scale = expected.abs().max().item()
    assert (got - expected).abs().max().item() <= 1e-2 * scale


def test_bfloat16_on_device_close_to_float32() -> None:
    x = _inputs(16)
    on_cpu, on_device = _tiny_upernet(), _tiny_upernet().to(DEVICE)

    with torch.inference_mode():
        expected = on_cpu(x, wavelengths_um=WAVELENGTHS_UM, patch_size=16)
        got = on_device(x.to(DEVICE), wavelengths_um=WAVELENGTHS_UM, patch_size=16, precision="bfloat16")

    assert got.dtype == torch.float32
    scale = expected.abs().max().item()
    assert (got.cpu() - expected).abs().max().item() <= 5e-2 * scale
