"""PI-resize: the defining inner-product property, identity at the base size, caching."""

from __future__ import annotations

import pytest
import torch

from pipeline.model import FlexiMo, pi_resize_kernel, pinv_matrix, resize_patch
from pipeline.model.patch_embed import wavelength_embedding


@pytest.mark.parametrize("patch_size", [16, 20, 24, 32, 40, 48])
def test_inner_product_kept_for_upsampling(patch_size: int) -> None:
    generator = torch.Generator().manual_seed(patch_size)
    kernels = torch.randn(6, 3, 16, 16, generator=generator, dtype=torch.float64)
    patch = torch.randn(3, 16, 16, generator=generator, dtype=torch.float64)

    resized_kernels = pi_resize_kernel(kernels, patch_size, pinv_matrix(16, patch_size, dtype=torch.float64))
    resized_patch = resize_patch(patch, patch_size)

    original = (kernels * patch).sum(dim=(1, 2, 3))
    resized = (resized_kernels * resized_patch).sum(dim=(1, 2, 3))
    torch.testing.assert_close(resized, original, rtol=1e-9, atol=1e-9)


def test_inner_product_float32() -> None:
    kernels = torch.randn(4, 12, 16, 16, generator=torch.Generator().manual_seed(1))
    patch = torch.randn(12, 16, 16, generator=torch.Generator().manual_seed(2))

    resized = (pi_resize_kernel(kernels, 40) * resize_patch(patch, 40)).sum(dim=(1, 2, 3))

    torch.testing.assert_close(resized, (kernels * patch).sum(dim=(1, 2, 3)), rtol=1e-4, atol=1e-4)


def test_downsampling_is_least_squares() -> None:
    # Below the base size the resize is not invertible: PI-resize gives the
    # kernel whose products with downsampled patches best match the original.
    kernels = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    smooth = resize_patch(torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64), 16)

    resized = pi_resize_kernel(kernels, 8, pinv_matrix(16, 8, dtype=torch.float64))

    assert resized.shape == (2, 1, 8, 8)
    assert torch.isfinite(resized).all()
    original = (kernels * smooth).sum(dim=(1, 2, 3))
    approximated = (resized * resize_patch(smooth, 8)).sum(dim=(1, 2, 3))
    assert (approximated - original).abs().max() < original.abs().max()


def test_base_size_leaves_kernel_unchanged(tiny_classifier: FlexiMo) -> None:
    kernels = torch.randn(3, 2, 16, 16)

    assert pi_resize_kernel(kernels, 16) is kernels

    embed = tiny_classifier.patch_embed
    waves = [0.49, 0.665]
    with torch.no_grad():
        kernel, _ = embed.generate_kernel(waves, 16)
        band_embeddings = embed.fclayer(wavelength_embedding(torch.tensor(waves), 128))
        raw_weights, _ = embed.weight_generator(band_embeddings)
    expected = raw_weights.reshape(2, 16, 16, 64).permute(3, 0, 1, 2) * 0.01
    assert kernel.shape == (64, 2, 16, 16)
    torch.testing.assert_close(kernel, expected, rtol=0, atol=0)


def test_pinv_matrix_cached_per_device_and_dtype() -> None:
    first = pinv_matrix(16, 24)

    assert pinv_matrix(16, 24) is first
    assert first.shape == (24 * 24, 16 * 16)
    assert pinv_matrix(16, 24, dtype=torch.float64).dtype == torch.float64


def test_pinv_rejects_nonpositive_sizes() -> None:
    with pytest.raises(ValueError, match="positive.*patch_size=0"):
        pinv_matrix(16, 0)


def test_non_square_kernel_rejected() -> None:
    with pytest.raises(ValueError, match="square kernels.*\\(1, 1, 16, 8\\)"):
        pi_resize_kernel(torch.zeros(1, 1, 16, 8), 32)
