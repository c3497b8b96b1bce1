"""FlexiMo forward: token grids, band counts, statelessness, threads, input checks, caches."""

from __future__ import annotations

import copy
import pickle
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from pipeline.model import MODEL_PRESETS, FlexiMo, build_model, resize_pos_embed, token_grid

S2_WAVES = [0.443, 0.49, 0.56, 0.665, 0.705, 0.74, 0.783, 0.842, 0.865, 0.945, 1.61, 2.19]


def _input(bands: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, bands, height, width, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    ("height", "width", "patch_size"),
    [(64, 96, 16), (100, 37, 8), (50, 130, 10), (33, 33, 33), (224, 160, 16), (17, 40, 1)],
)
def test_non_square_token_grid(height: int, width: int, patch_size: int, tiny_upernet: FlexiMo) -> None:
    x = _input(3, height, width)

    with torch.no_grad():
        features = tiny_upernet.forward_features(x, wavelengths_um=S2_WAVES[:3], patch_size=patch_size)

    expected = ((height + 2 - patch_size) // patch_size + 1, (width + 2 - patch_size) // patch_size + 1)
    assert token_grid((height, width), patch_size) == expected
    assert features.shape == (2, 64, *expected)


@pytest.mark.parametrize("bands", [1, 2, 3, 4, 7, 12, 13])
def test_any_number_of_bands(bands: int, tiny_classifier: FlexiMo) -> None:
    waves = (S2_WAVES + [11.2])[:bands]

    with torch.no_grad():
        logits = tiny_classifier(_input(bands, 48, 48), wavelengths_um=waves, patch_size=16)

    assert logits.shape == (2, 5)
    assert torch.isfinite(logits).all()


def test_band_order_follows_wavelengths(tiny_classifier: FlexiMo) -> None:
    x = _input(3, 48, 48)
    waves = [0.49, 0.56, 0.665]

    with torch.no_grad():
        forward = tiny_classifier(x, wavelengths_um=waves, patch_size=16)
        reversed_bands = tiny_classifier(x.flip(1), wavelengths_um=waves[::-1], patch_size=16)

    torch.testing.assert_close(reversed_bands, forward, rtol=1e-5, atol=1e-5)


def test_sizes_a_b_a_identical(tiny_upernet: FlexiMo) -> None:
    x16, x32 = _input(4, 64, 64, seed=1), _input(4, 128, 96, seed=2)
    waves = S2_WAVES[1:5]

    with torch.no_grad():
        first = tiny_upernet(x16, wavelengths_um=waves, patch_size=16)
        other = tiny_upernet(x32, wavelengths_um=waves, patch_size=32)
        second = tiny_upernet(x16, wavelengths_um=waves, patch_size=16)
        fresh = build_model(tiny_upernet.config, seed=5)(x16, wavelengths_um=waves, patch_size=16)

    assert other.shape == (2, 4, 128, 96)
    torch.testing.assert_close(second, first, rtol=0, atol=0)
    torch.testing.assert_close(fresh, first, rtol=0, atol=0)


def test_forward_keeps_state_dict(tiny_classifier: FlexiMo) -> None:
    before = {key: value.clone() for key, value in tiny_classifier.state_dict().items()}

    with torch.no_grad():
        for patch_size in (8, 16, 24):
            tiny_classifier(_input(3, 96, 72), wavelengths_um=S2_WAVES[:3], patch_size=patch_size)

    after = tiny_classifier.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key


def test_threads_match_sequential_calls() -> None:
    model = build_model(MODEL_PRESETS["tiny_upernet"].replace(num_classes=3), seed=8)
    jobs = [(patch_size, bands, seed) for seed, (patch_size, bands) in enumerate([(8, 3), (16, 4), (12, 12), (20, 1)] * 3)]

    def run(job: tuple[int, int, int]) -> torch.Tensor:
        patch_size, bands, seed = job
        with torch.no_grad():
            return model(_input(bands, 80, 64, seed), wavelengths_um=S2_WAVES[:bands], patch_size=patch_size)

    model.clear_caches()  # threads must also agree while the caches fill
    barrier = threading.Barrier(4)

    def run_together(job: tuple[int, int, int]) -> torch.Tensor:
        if job[2] < 4:  # the first four calls start at the same moment
            barrier.wait()
        return run(job)

    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(run_together, jobs))
    sequential = [run(job) for job in jobs]

    for job, parallel, serial in zip(jobs, concurrent, sequential, strict=True):
        assert parallel.shape == (2, 3, 80, 64), job
        torch.testing.assert_close(parallel, serial, rtol=0, atol=0, msg=f"job {job}")


@pytest.mark.parametrize(
    ("waves", "error", "message"),
    [
        ([443.0, 490.0, 560.0], ValueError, r"wavelengths_um\[0\] = 443 looks like nanometres.*micrometres"),
        ([0.49, 0.56], ValueError, "Got 2 wavelengths for an input with 3 channels"),
        ([0.49, 0.56, 0.665, 0.842], ValueError, "Got 4 wavelengths for an input with 3 channels"),
        ([0.49, -0.56, 0.665], ValueError, r"wavelengths_um\[1\] = -0.56 is not a positive"),
        ([0.49, float("nan"), 0.665], ValueError, r"wavelengths_um\[1\] = nan"),
        ([0.49, 0.56, 45.0], ValueError, r"45 µm is outside the supported range"),
        ([], ValueError, "wavelengths_um is empty"),
        ("0.49", TypeError, "sequence of floats in micrometres"),
    ],
    ids=["nanometres", "too-few", "too-many", "negative", "nan", "out-of-range", "empty", "string"],
)
def test_bad_wavelengths_rejected(waves: list[float], error: type, message: str, tiny_classifier: FlexiMo) -> None:
    with pytest.raises(error, match=message):
        tiny_classifier(_input(3, 32, 32), wavelengths_um=waves, patch_size=16)


@pytest.mark.parametrize(
    ("patch_size", "error", "message"),
    [
        (0, ValueError, "patch_size must be a positive number of pixels, got 0"),
        (-4, ValueError, "got -4"),
        (40, ValueError, "patch_size=40 is larger than the input of 32x48 pixels"),
        (16.0, TypeError, "patch_size must be an int"),
        (True, TypeError, "patch_size must be an int"),
    ],
)
def test_bad_patch_size_rejected(patch_size: object, error: type, message: str, tiny_classifier: FlexiMo) -> None:
    with pytest.raises(error, match=message):
        tiny_classifier(_input(3, 32, 48), wavelengths_um=S2_WAVES[:3], patch_size=patch_size)  # type: ignore[arg-type]


def test_bad_tensor_rejected(tiny_classifier: FlexiMo) -> None:
    with pytest.raises(ValueError, match=r"shape \(B, C, H, W\), got shape \(3, 32, 32\)"):
        tiny_classifier(torch.zeros(3, 32, 32), wavelengths_um=S2_WAVES[:3], patch_size=16)
    with pytest.raises(TypeError, match="floating-point tensor, got dtype torch.int16"):
        tiny_classifier(torch.zeros(1, 3, 32, 32, dtype=torch.int16), wavelengths_um=S2_WAVES[:3], patch_size=16)
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        tiny_classifier([[0.0]], wavelengths_um=S2_WAVES[:3], patch_size=16)  # type: ignore[arg-type]


def test_kernel_cache_follows_weight_updates(tiny_classifier: FlexiMo) -> None:
    model = build_model(tiny_classifier.config, seed=3)
    x = _input(3, 48, 48)
    with torch.no_grad():
        before = model(x, wavelengths_um=S2_WAVES[:3], patch_size=12)

        model.load_state_dict(build_model(model.config, seed=4).state_dict())
        after = model(x, wavelengths_um=S2_WAVES[:3], patch_size=12)
        expected = build_model(model.config, seed=4)(x, wavelengths_um=S2_WAVES[:3], patch_size=12)

    assert not torch.equal(after, before)
    torch.testing.assert_close(after, expected, rtol=0, atol=0)


def test_gradients_reach_generator_and_pos_embed(tiny_classifier: FlexiMo) -> None:
    model = build_model(tiny_classifier.config, seed=6).train()
    x = _input(3, 64, 48)

    with torch.no_grad():
        model(x, wavelengths_um=S2_WAVES[:3], patch_size=8)  # fill the caches first
    model(x, wavelengths_um=S2_WAVES[:3], patch_size=8).sum().backward()

    assert model.patch_embed.weight_generator.fc_weight.weight.grad is not None
    assert model.patch_embed.fclayer.w1.weight.grad is not None
    assert model.pos_embed.grad is not None
    assert model.pos_embed.grad.abs().sum() > 0


def test_pos_embed_resize_keeps_cls_and_base_grid() -> None:
    pos_embed = torch.randn(1, 1 + 14 * 14, 8)

    same = resize_pos_embed(pos_embed, (14, 14))
    wide = resize_pos_embed(pos_embed, (7, 20))

    assert same is pos_embed
    assert wide.shape == (1, 1 + 7 * 20, 8)
    torch.testing.assert_close(wide[:, 0], pos_embed[:, 0], rtol=0, atol=0)
    constant = resize_pos_embed(torch.ones(1, 1 + 4 * 4, 2), (3, 9))
    torch.testing.assert_close(constant, torch.ones(1, 1 + 3 * 9, 2))


def test_pos_embed_must_be_square_grid() -> None:
    with pytest.raises(ValueError, match="15 grid entries"):
        resize_pos_embed(torch.zeros(1, 16, 4), (4, 4))


def test_copy_and_pickle_after_caching(tiny_upernet: FlexiMo) -> None:
    x = _input(4, 64, 64)
    with torch.no_grad():
        expected = tiny_upernet(x, wavelengths_um=S2_WAVES[:4], patch_size=8)

    copied = copy.deepcopy(tiny_upernet)
    unpickled = pickle.loads(pickle.dumps(tiny_upernet))

    with torch.no_grad():
        torch.testing.assert_close(copied(x, wavelengths_um=S2_WAVES[:4], patch_size=8), expected, rtol=0, atol=0)
        torch.testing.assert_close(unpickled(x, wavelengths_um=S2_WAVES[:4], patch_size=8), expected, rtol=0, atol=0)


def test_prepared_linears_match_modules(tiny_classifier: FlexiMo) -> None:
    model = build_model(tiny_classifier.config, seed=12)
    x = _input(3, 64, 64)

    with torch.no_grad():
        prepared = model(x, wavelengths_um=S2_WAVES[:3], patch_size=8)
        model.prepare_linears = False
        plain = model(x, wavelengths_um=S2_WAVES[:3], patch_size=8)
    with torch.enable_grad():
        training_path = model(x, wavelengths_um=S2_WAVES[:3], patch_size=8)

    assert training_path.requires_grad
    torch.testing.assert_close(prepared, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(training_path.detach(), plain, rtol=1e-5, atol=1e-5)


def test_cache_from_inference_mode_serves_autograd(tiny_classifier: FlexiMo) -> None:
    model = build_model(tiny_classifier.config, seed=13)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    x = _input(3, 48, 48)

    with torch.inference_mode():
        model(x, wavelengths_um=S2_WAVES[:3], patch_size=12)  # fills the caches
    x.requires_grad_(True)
    model(x, wavelengths_um=S2_WAVES[:3], patch_size=12).sum().backward()

    assert x.grad is not None
    assert x.grad.abs().sum() > 0
