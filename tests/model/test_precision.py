"""Precision: bfloat16 close to float32, float32 exact inside an outer autocast."""

from __future__ import annotations

import pytest
import torch

from pipeline.model import FlexiMo, autocast, bfloat16_available, precision_for_device

WAVES = [0.49, 0.56, 0.665, 0.842]
needs_bf16 = pytest.mark.skipif(not bfloat16_available("cpu"), reason="this CPU has no native bfloat16 matmuls")


@needs_bf16
def test_bfloat16_close_to_float32(tiny_classifier: FlexiMo, tiny_upernet: FlexiMo) -> None:
    x = torch.randn(2, 4, 64, 64, generator=torch.Generator().manual_seed(0))
    for model in (tiny_classifier, tiny_upernet):
        with torch.no_grad():
            exact = model(x, wavelengths_um=WAVES, patch_size=8)
            fast = model(x, wavelengths_um=WAVES, patch_size=8, precision="bfloat16")

        assert fast.dtype == torch.float32
        assert fast.shape == exact.shape
        relative = (fast - exact).abs().max() / exact.abs().max()
        assert relative < 0.05
        assert not torch.equal(fast, exact)


@needs_bf16
def test_float32_exact_inside_outer_autocast(tiny_upernet: FlexiMo) -> None:
    x = torch.randn(1, 4, 48, 48)

    with torch.no_grad():
        exact = tiny_upernet(x, wavelengths_um=WAVES, patch_size=16)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            inside = tiny_upernet(x, wavelengths_um=WAVES, patch_size=16, precision="float32")

    torch.testing.assert_close(inside, exact, rtol=0, atol=0)


@needs_bf16
def test_default_precision_follows_outer_autocast(tiny_upernet: FlexiMo) -> None:
    x = torch.randn(1, 4, 48, 48)

    with torch.no_grad():
        explicit = tiny_upernet(x, wavelengths_um=WAVES, patch_size=16, precision="bfloat16")
        exact = tiny_upernet(x, wavelengths_um=WAVES, patch_size=16)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            inside = tiny_upernet(x, wavelengths_um=WAVES, patch_size=16)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
            disabled = tiny_upernet(x, wavelengths_um=WAVES, patch_size=16)

    torch.testing.assert_close(inside, explicit, rtol=0, atol=0)
    torch.testing.assert_close(disabled, exact, rtol=0, atol=0)


def test_unknown_precision_rejected(tiny_classifier: FlexiMo) -> None:
    with pytest.raises(ValueError, match="precision must be one of \\('float32', 'bfloat16'\\), got 'float16'"):
        tiny_classifier(torch.zeros(1, 4, 32, 32), wavelengths_um=WAVES, patch_size=16, precision="float16")  # type: ignore[arg-type]


def test_autocast_helper_enables_bfloat16() -> None:
    a, b = torch.randn(4, 4), torch.randn(4, 4)

    with autocast("cpu", "float32"):
        assert (a @ b).dtype == torch.float32
    if bfloat16_available("cpu"):
        with autocast("cpu", "bfloat16"):
            assert (a @ b).dtype == torch.bfloat16


def test_bfloat16_unsupported_device_rejected() -> None:
    with pytest.raises(ValueError, match="not supported at native speed on device 'meta'"):
        with autocast("meta", "bfloat16"):
            pass


def test_auto_precision_per_device() -> None:
    assert precision_for_device("auto", "cpu") == "float32"
    assert precision_for_device("auto", "meta") == "float32"
    on_cuda = "bfloat16" if bfloat16_available("cuda") else "float32"
    assert precision_for_device("auto", "cuda") == on_cuda
    assert precision_for_device("float32", "cpu") == "float32"


def test_explicit_precision_checked() -> None:
    with pytest.raises(ValueError, match="precision must be one of \\('float32', 'bfloat16'\\), got 'float16'"):
        precision_for_device("float16", "cpu")
    with pytest.raises(ValueError, match="not supported at native speed on device 'meta'"):
        precision_for_device("bfloat16", "meta")
