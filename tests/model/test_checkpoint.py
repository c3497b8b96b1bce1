"""Checkpoint loading: formats, containers, prefixes, strict key reports, new heads."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pipeline.model import MODEL_PRESETS, CheckpointError, FlexiMo, build_model, load_model
from pipeline.warnings import FleximoWarning

WAVES = [0.49, 0.56, 0.665]


def _logits(model: FlexiMo, size: int = 64, patch_size: int = 16) -> torch.Tensor:
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(x, wavelengths_um=WAVES, patch_size=patch_size)


@pytest.mark.parametrize("preset", ["tiny", "tiny_upernet"])
def test_round_trip_save_load(preset: str, tmp_path: Path) -> None:
    model = build_model(MODEL_PRESETS[preset].replace(num_classes=3), seed=1)
    path = tmp_path / "model.pth"
    torch.save(model.state_dict(), path)

    loaded = load_model(path, num_heads=4)

    assert loaded.config == model.config
    assert not loaded.training
    torch.testing.assert_close(_logits(loaded), _logits(model), rtol=0, atol=0)


def test_upernet_keys_at_top_level(tiny_upernet: FlexiMo) -> None:
    keys = set(tiny_upernet.state_dict())
    assert "cls_seg.0.weight" in keys
    assert "conv0.3.weight" in keys
    assert "decoder.PPMHead.final.0.weight" in keys
    assert not any(key.startswith("dense_head.") for key in keys)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda state: {"model": state, "epoch": 3},
        lambda state: {"state_dict": state, "optimizer": {"lr": 0.1}},
        lambda state: {"module." + key: value for key, value in state.items()},
        lambda state: {"state_dict": {"model." + key: value for key, value in state.items()}},
    ],
    ids=["model-container", "state-dict-container", "module-prefix", "lightning-style"],
)
def test_containers_and_prefixes(wrap, tiny_classifier: FlexiMo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "wrapped.pt"
    torch.save(wrap(tiny_classifier.state_dict()), path)

    loaded = load_model(path, num_heads=4)

    torch.testing.assert_close(_logits(loaded), _logits(tiny_classifier), rtol=0, atol=0)


def test_safetensors_file(tiny_upernet: FlexiMo, tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_file({key: value.contiguous() for key, value in tiny_upernet.state_dict().items()}, str(path))

    loaded = load_model(path, num_heads=4)

    assert loaded.config == tiny_upernet.config
    torch.testing.assert_close(_logits(loaded), _logits(tiny_upernet), rtol=0, atol=0)


def test_architecture_inferred_from_shapes(tmp_path: Path) -> None:
    config = MODEL_PRESETS["tiny"].replace(embed_dim=128, depth=3, num_heads=2, num_classes=7, pos_embed_grid=8)
    path = tmp_path / "model.pth"
    torch.save(build_model(config, seed=0).state_dict(), path)

    loaded = load_model(path)

    assert loaded.config.embed_dim == 128
    assert loaded.config.depth == 3
    assert loaded.config.num_classes == 7
    assert loaded.config.pos_embed_grid == 8
    assert loaded.config.num_heads == 2  # DOFA default: 64-wide heads


def test_every_bad_key_reported(tiny_classifier: FlexiMo, tmp_path: Path) -> None:
    state = dict(tiny_classifier.state_dict())
    del state["blocks.1.norm1.weight"]
    del state["fc_norm.bias"]
    state["blocks.0.extra.weight"] = torch.zeros(2)
    state["head.bias"] = torch.zeros(9)
    path = tmp_path / "broken.pth"
    torch.save(state, path)

    with pytest.raises(CheckpointError) as raised:
        load_model(path, num_heads=4)

    message = str(raised.value)
    assert "missing (2): blocks.1.norm1.weight, fc_norm.bias" in message
    assert "unexpected (1): blocks.0.extra.weight" in message
    assert "head.bias: checkpoint (9,), model (5,)" in message


def test_backbone_only_needs_permission(tiny_classifier: FlexiMo, tmp_path: Path) -> None:
    state = {k: v for k, v in tiny_classifier.state_dict().items() if not k.startswith(("head.", "fc_norm."))}
    path = tmp_path / "dofa_backbone.pth"
    torch.save(state, path)

    with pytest.raises(CheckpointError, match="backbone only.*allow_new_head=True"):
        load_model(path, num_heads=4)
    with pytest.raises(CheckpointError, match="missing \\(4\\): fc_norm.bias, fc_norm.weight, head.bias, head.weight"):
        load_model(path, num_heads=4, head="classifier", num_classes=6)
    with pytest.warns(FleximoWarning, match="freshly initialised"):
        model = load_model(path, num_heads=4, head="upernet", num_classes=6, allow_new_head=True)

    assert model.config.head == "upernet"
    assert _logits(model).shape == (1, 6, 64, 64)
    torch.testing.assert_close(model.pos_embed, tiny_classifier.pos_embed, rtol=0, atol=0)


def test_partial_head_not_replaced(tiny_classifier: FlexiMo, tmp_path: Path) -> None:
    state = {k: v for k, v in tiny_classifier.state_dict().items() if k != "head.bias"}
    path = tmp_path / "partial.pth"
    torch.save(state, path)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(CheckpointError, match="part of a classifier head"):
            load_model(path, num_heads=4, allow_new_head=True)


def test_pickled_objects_rejected(tmp_path: Path) -> None:
    path = tmp_path / "unsafe.pth"
    with open(path, "wb") as file:
        pickle.dump({"model": Path("/etc/passwd")}, file, protocol=2)

    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_model(path)


def test_container_without_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "empty.pth"
    torch.save({"epoch": 3, "config": {"lr": 0.1}}, path)

    with pytest.raises(CheckpointError, match="contains no state dict.*'config', 'epoch'"):
        load_model(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="Checkpoint not found"):
        load_model(tmp_path / "nope.pth")


def test_not_a_dofa_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(8, 3, 7, 7)}, path)

    with pytest.raises(CheckpointError, match="no 'pos_embed'"):
        load_model(path)


def test_num_heads_must_divide_width(tiny_classifier: FlexiMo, tmp_path: Path) -> None:
    path = tmp_path / "model.pth"
    torch.save(tiny_classifier.state_dict(), path)

    with pytest.raises(ValueError, match="embed_dim=64 is not divisible by num_heads=3"):
        load_model(path, num_heads=3)
