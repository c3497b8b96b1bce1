"""Seeded construction and presets."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.model import MODEL_PRESETS, ModelConfig, build_model, preset_config


def weights_digest(preset: str, seed: int) -> str:
    """Return a SHA-256 of the seeded model's state dict (run in this or another process)."""
    model = build_model(MODEL_PRESETS[preset], seed=seed)
    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        digest.update(key.encode())
        digest.update(value.contiguous().numpy().tobytes())
    return digest.hexdigest()


def test_same_seed_same_weights_across_processes() -> None:
    script = "from tests.model.test_build import weights_digest; print(weights_digest('tiny_upernet', 42))"
    root = Path(__file__).resolve().parents[2]

    other_process = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=root
    ).stdout.strip()

    assert len(other_process) == 64
    assert other_process == weights_digest("tiny_upernet", 42)


def test_different_seeds_differ() -> None:
    first = build_model(MODEL_PRESETS["tiny"], seed=1)
    second = build_model(MODEL_PRESETS["tiny"], seed=2)

    assert not torch.equal(first.blocks[0].attn.qkv.weight, second.blocks[0].attn.qkv.weight)
    assert torch.equal(first.blocks[0].norm1.weight, second.blocks[0].norm1.weight)  # ones


def test_seed_independent_of_global_rng() -> None:
    torch.manual_seed(0)
    first = build_model(MODEL_PRESETS["tiny"], seed=5)
    torch.manual_seed(1)
    second = build_model(MODEL_PRESETS["tiny"], seed=5)

    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_built_model_in_eval_mode() -> None:
    assert not build_model(MODEL_PRESETS["tiny"], seed=0).training


@pytest.mark.parametrize(
    ("name", "dims"),
    [("vit_base", (768, 12, 12)), ("vit_large", (1024, 24, 16)), ("tiny", (64, 2, 4))],
)
def test_presets_have_both_heads(name: str, dims: tuple[int, int, int]) -> None:
    classifier, dense = MODEL_PRESETS[name], MODEL_PRESETS[f"{name}_upernet"]

    assert (classifier.embed_dim, classifier.depth, classifier.num_heads) == dims
    assert (dense.embed_dim, dense.depth, dense.num_heads) == dims
    assert classifier.head == "classifier"
    assert dense.head == "upernet"


def test_preset_config_switches_head() -> None:
    config = preset_config("tiny", head="upernet", num_classes=3)

    assert config.head == "upernet"
    assert config.num_classes == 3
    assert config.decoder_channels == MODEL_PRESETS["tiny_upernet"].decoder_channels
    with pytest.raises(KeyError, match="Unknown model preset 'vit_small'"):
        preset_config("vit_small")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"embed_dim": 0}, "embed_dim must be a positive integer, got 0"),
        ({"num_heads": 5}, "not divisible by num_heads=5"),
        ({"head": "linear"}, "head must be one of"),
        ({"mlp_ratio": 0.0}, "mlp_ratio=0.0"),
        ({"head": "upernet", "decoder_channels": 12}, "decoder_channels=12 must be a positive multiple of 8"),
    ],
)
def test_invalid_config_rejected(changes: dict, message: str) -> None:
    base = {"embed_dim": 64, "depth": 1, "num_heads": 4, "num_classes": 2}
    with pytest.raises(ValueError, match=message):
        ModelConfig(**{**base, **changes})
