"""Dense upernet head: output size, key names, decoder width, fused 1x1 convolution."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.model import MODEL_PRESETS, FlexiMo, build_model
from pipeline.model.upernet import FPNDecoder

WAVES = [0.49, 0.56, 0.665, 0.842]


@pytest.mark.parametrize(
    ("height", "width", "patch_size"),
    [(256, 256, 16), (128, 128, 8), (640, 640, 40), (96, 160, 16), (100, 75, 12), (96, 96, 48), (64, 64, 4)],
)
def test_output_size_equals_tile(height: int, width: int, patch_size: int, tiny_upernet: FlexiMo) -> None:
    x = torch.randn(1, 4, height, width, generator=torch.Generator().manual_seed(height))

    with torch.no_grad():
        logits = tiny_upernet(x, wavelengths_um=WAVES, patch_size=patch_size)

    assert logits.shape == (1, 4, height, width)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


def test_head_key_names(tiny_upernet: FlexiMo) -> None:
    keys = set(tiny_upernet.state_dict())

    for branch in ("conv0", "conv1", "conv2", "conv3"):
        assert f"{branch}.0.weight" in keys  # 1x1 conv
        assert f"{branch}.1.weight" in keys  # GroupNorm
        assert f"{branch}.3.weight" in keys  # transposed conv
    assert "decoder.PPMHead.psp_modules.3.1.weight" in keys
    assert "decoder.Conv_fuse3_.1.running_var" in keys
    assert "decoder.fuse_all.0.weight" in keys
    assert "cls_seg.0.weight" in keys
    assert not any(key.startswith(("head.", "fc_norm.")) for key in keys)


def test_branch_upsampling_factors(tiny_upernet: FlexiMo) -> None:
    head = tiny_upernet.dense_head
    assert head is not None
    tokens = torch.randn(1, 64, 5, 7)

    with torch.no_grad():
        shapes = [tuple(branch(tokens).shape) for branch in (head.conv0, head.conv1, head.conv2, head.conv3)]

    assert shapes == [(1, 8, 80, 112), (1, 16, 40, 56), (1, 32, 20, 28), (1, 64, 10, 14)]


def test_tiny_decoder_narrower_than_vit_base() -> None:
    tiny, base = MODEL_PRESETS["tiny_upernet"], MODEL_PRESETS["vit_base_upernet"]

    assert tiny.decoder_channels < base.decoder_channels
    assert tiny.decoder_fpn_channels < base.decoder_fpn_channels
    assert base.branch_channels == (128, 256, 512, 1024)


def test_fused_levels_equal_concatenation() -> None:
    torch.manual_seed(0)
    decoder = FPNDecoder(channels=64, out_channels=8).eval()
    for module in decoder.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    levels = [torch.randn(2, 8, size, size + 3) for size in (4, 8, 16, 32)]

    with torch.no_grad():
        fused = decoder.fuse_levels(levels)
        size = levels[-1].shape[-2:]
        upsampled = [F.interpolate(level, size=size, mode="bilinear", align_corners=True) for level in levels[:-1]]
        expected = decoder.fuse_all(torch.cat([*upsampled, levels[-1]], dim=1))

    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)


def test_dense_features_are_token_map(tiny_upernet: FlexiMo) -> None:
    x = torch.randn(3, 4, 80, 48)

    with torch.no_grad():
        features = tiny_upernet.forward_features(x, wavelengths_um=WAVES, patch_size=16)

    assert features.shape == (3, 64, 5, 3)


def test_dense_head_gradients_flow() -> None:
    model = build_model(MODEL_PRESETS["tiny_upernet"].replace(num_classes=2), seed=1).train()
    x = torch.randn(2, 4, 32, 32)

    loss = F.cross_entropy(model(x, wavelengths_um=WAVES, patch_size=8), torch.zeros(2, 32, 32, dtype=torch.long))
    loss.backward()

    assert model.dense_head is not None
    assert model.dense_head.conv0[0].weight.grad is not None
    assert model.blocks[0].attn.qkv.weight.grad is not None


def test_single_token_grid_rejected(tiny_upernet: FlexiMo) -> None:
    # The tiny head's 8-channel branch has 8 GroupNorm groups of one channel.
    with pytest.raises(ValueError, match="cannot normalise a 1x1 token grid"):
        tiny_upernet(torch.zeros(1, 4, 48, 48), wavelengths_um=WAVES, patch_size=48)


def test_folded_inference_head_matches_modules() -> None:
    model = build_model(MODEL_PRESETS["tiny_upernet"].replace(num_classes=3), seed=4)
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.rand(module.num_features, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    x = torch.randn(2, 4, 64, 48, generator=generator)

    with torch.no_grad():
        folded = model(x, wavelengths_um=WAVES, patch_size=8)
    with torch.enable_grad():
        unfolded = model(x, wavelengths_um=WAVES, patch_size=8)

    assert unfolded.requires_grad
    assert folded.is_contiguous()
    torch.testing.assert_close(folded, unfolded.detach(), rtol=1e-4, atol=1e-4)


def _skip_model(seed: int = 5, channels: int = 8) -> FlexiMo:
    return build_model(MODEL_PRESETS["tiny_upernet"].replace(num_classes=2, pixel_skip_channels=channels), seed=seed)


def test_pixel_skip_keys_round_trip() -> None:
    from pipeline.model.checkpoint import infer_config

    state = _skip_model(channels=12).state_dict()

    assert "pixel_skip.generator.2.weight" in state
    assert "pixel_skip.project.weight" in state
    assert not any(key.startswith("dense_head.") for key in state)
    assert infer_config(state).pixel_skip_channels == 12
    assert infer_config(build_model(MODEL_PRESETS["tiny_upernet"], seed=0).state_dict()).pixel_skip_channels == 0


def test_pixel_skip_reaches_single_pixels() -> None:
    head = _skip_model().eval().dense_head
    tokens = torch.randn(1, 64, 4, 4, generator=torch.Generator().manual_seed(1))
    pixels = torch.rand(1, 4, 48, 48, generator=torch.Generator().manual_seed(2))
    changed = pixels.clone()
    changed[:, :, 20, 31] += 0.5

    with torch.no_grad():
        before = head(tokens, (48, 48), pixels=pixels, wavelengths_um=WAVES)
        after = head(tokens, (48, 48), pixels=changed, wavelengths_um=WAVES)

    # Same tokens: only the pixel and the 3x3 neighbourhood of cls_seg change.
    rows, cols = torch.nonzero((after - before).abs().amax(dim=(0, 1)) > 0, as_tuple=True)
    assert (rows.min().item(), rows.max().item(), cols.min().item(), cols.max().item()) == (19, 21, 30, 32)


def test_pixel_skip_head_needs_pixels() -> None:
    head = _skip_model().dense_head

    with pytest.raises(ValueError, match="missing pixels: this upernet head has a pixel skip"):
        head(torch.randn(1, 64, 4, 4), (48, 48))


def test_pixel_skip_takes_any_band_set() -> None:
    model = _skip_model().eval()

    with torch.no_grad():
        four = model(torch.rand(1, 4, 32, 32), wavelengths_um=WAVES, patch_size=8)
        seven = model(torch.rand(1, 7, 32, 32), wavelengths_um=[0.44, *WAVES, 1.61, 2.19], patch_size=8)

    assert four.shape == seven.shape == (1, 2, 32, 32)


def test_pixel_skip_folded_and_trainable() -> None:
    model = _skip_model().eval()
    x = torch.randn(2, 4, 40, 40, generator=torch.Generator().manual_seed(2))

    with torch.no_grad():
        folded = model(x, wavelengths_um=WAVES, patch_size=10)
    with torch.enable_grad():
        unfolded = model(x, wavelengths_um=WAVES, patch_size=10)
    torch.testing.assert_close(folded, unfolded.detach(), rtol=1e-4, atol=1e-4)

    model.train()
    logits = model(x, wavelengths_um=WAVES, patch_size=10)
    F.cross_entropy(logits, torch.ones(2, 40, 40, dtype=torch.long)).backward()
    assert model.dense_head.pixel_skip.generator[0].weight.grad is not None


def test_pixel_skip_needs_the_upernet_head() -> None:
    with pytest.raises(ValueError, match="pixel_skip_channels=8 needs the upernet head"):
        MODEL_PRESETS["tiny"].replace(pixel_skip_channels=8)
    with pytest.raises(ValueError, match="pixel_skip_channels must be 0"):
        MODEL_PRESETS["tiny_upernet"].replace(pixel_skip_channels=-1)
