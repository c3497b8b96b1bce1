"""Model cards: shipped examples, validation, input scaling, fingerprints, loading."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

import pipeline.model
from pipeline.model import FlexiMo, ModelCardError, build_model, load_card, load_model, load_model_from_card
from pipeline.model.cards import ModelCard
from pipeline.model.scaling import StoredInputTransform
from pipeline.warnings import FleximoWarning

CARDS_DIR = Path(pipeline.model.__file__).parent / "cards"
S2_WAVES = [0.443, 0.49, 0.56, 0.665, 0.705, 0.74, 0.783, 0.842, 0.865, 0.945, 1.61, 2.19]


def _card_dict(**changes: object) -> dict:
    raw = yaml.safe_load((CARDS_DIR / "tiny_landcover_seeded.yaml").read_text())
    raw.update(changes)
    return raw


def _write(tmp_path: Path, raw: dict, name: str = "card.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("name", ["demo_landcover_vitb_seeded", "demo_cloud_tiny_seeded", "tiny_landcover_seeded"])
def test_shipped_cards_load(name: str) -> None:
    card = load_card(CARDS_DIR / f"{name}.yaml")

    config = card.to_model_config()
    assert config.head == "upernet"
    assert config.num_classes == len(card.classes)
    assert card.weights == "seeded-random"
    assert card.reference_patch_size == 16
    assert card.token_grid == 16


def test_demo_landcover_is_vit_base() -> None:
    config = load_card(CARDS_DIR / "demo_landcover_vitb_seeded.yaml").to_model_config()

    assert (config.embed_dim, config.depth, config.num_heads) == (768, 12, 12)


def test_seeded_card_builds_same_weights() -> None:
    card = load_card(CARDS_DIR / "demo_cloud_tiny_seeded.yaml")

    first, second = load_model_from_card(card), load_model_from_card(card)

    assert first.config.num_classes == 2
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_dofa_8bit_conversion() -> None:
    card = load_card(CARDS_DIR / "tiny_landcover_seeded.yaml")
    scaling = card.input_scaling
    reflectance = torch.tensor([0.0, 0.1, 0.3, 0.16, 1.0]).reshape(1, 5, 1, 1)
    waves = [0.665, 0.56, 0.49, 0.842, 1.61]

    eight_bit = scaling.to_8bit(reflectance, waves).flatten().tolist()

    # TCI: 1 + 254 * reflectance / 0.2, saturating at 255.
    assert eight_bit[0] == pytest.approx(1.0)
    assert eight_bit[1] == pytest.approx(128.0)
    assert eight_bit[2] == pytest.approx(255.0)
    # Other bands: reflectance * 10000 / 32, clipped to 255.
    assert eight_bit[3] == pytest.approx(50.0)
    assert eight_bit[4] == pytest.approx(255.0)

    prepared = card.prepare_input(reflectance, waves).flatten()
    assert prepared[1].item() == pytest.approx((128.0 - 112.0) / 72.0)
    assert prepared[3].item() == pytest.approx((50.0 - 72.0) / 36.0)


def test_reflectance_card_standardises_by_wavelength() -> None:
    card = load_card(CARDS_DIR / "demo_cloud_tiny_seeded.yaml")
    reflectance = torch.full((1, 2, 2, 2), 0.2)

    # 0.492 and 0.835 µm (Sentinel-2B / Gaofen-like) match B02 and B08 within tolerance.
    prepared = card.prepare_input(reflectance, [0.492, 0.835])

    assert prepared[0, 0, 0, 0].item() == pytest.approx((0.2 - 0.10) / 0.08)
    assert prepared[0, 1, 0, 0].item() == pytest.approx((0.2 - 0.24) / 0.11)


def test_band_without_stats_warns() -> None:
    card = load_card(CARDS_DIR / "demo_cloud_tiny_seeded.yaml")

    with pytest.warns(FleximoWarning, match="no normalisation statistics for a band at 1.375 µm.*1.61"):
        card.prepare_input(torch.zeros(1, 1, 4, 4), [1.375])


def test_prepare_input_rejects_nanometres() -> None:
    card = load_card(CARDS_DIR / "demo_cloud_tiny_seeded.yaml")

    with pytest.raises(ValueError, match="looks like nanometres"):
        card.prepare_input(torch.zeros(1, 1, 4, 4), [665.0])


def test_card_without_input_scaling_rejected(tmp_path: Path) -> None:
    raw = _card_dict()
    del raw["input_scaling"]

    with pytest.raises(ModelCardError, match="does not state its input_scaling"):
        load_card(_write(tmp_path, raw))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"classes": [{"id": 0, "name": "a", "color": "red"}]}, "color must be '#rrggbb'"),
        ({"classes": [{"id": 0, "name": "a", "color": "#000000"}, {"id": 2, "name": "b", "color": "#ffffff"}]}, "class ids must be 0..1"),
        ({"task": "segmentation"}, "task"),
        ({"architecture": "vit_huge"}, "unknown preset 'vit_huge'"),
        ({"seed": None}, "needs a seed"),
        ({"wavelengths_um": [490.0, 560.0]}, "looks like nanometres"),
        ({"reference_gsd_m": 0}, "reference_gsd_m"),
        ({"input_scaling": {"kind": "zscore"}}, "input_scaling"),
        ({"architecture": {"preset": "tiny", "head": "classifier"}}, "needs a 'upernet' head"),
        ({"surprise": 1}, "surprise"),
    ],
    ids=["colour", "class-ids", "task", "preset", "seed", "nanometres", "gsd", "scaling-kind", "head", "extra-field"],
)
def test_invalid_card_rejected(changes: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(ModelCardError, match=message):
        load_card(_write(tmp_path, _card_dict(**changes)))


def test_explicit_architecture(tmp_path: Path) -> None:
    raw = _card_dict(architecture={"embed_dim": 32, "depth": 1, "num_heads": 2, "decoder_channels": 32, "decoder_fpn_channels": 16})

    config = load_card(_write(tmp_path, raw)).to_model_config()

    assert (config.embed_dim, config.depth, config.num_heads, config.head) == (32, 1, 2, "upernet")
    assert config.decoder_fpn_channels == 16


def test_checkpoint_card_loads_and_fingerprints(tiny_upernet: FlexiMo, tmp_path: Path) -> None:
    model = build_model(tiny_upernet.config.replace(num_classes=10), seed=9)
    checkpoint = tmp_path / "landcover.pth"
    torch.save(model.state_dict(), checkpoint)
    card_path = _write(tmp_path, _card_dict(weights="landcover.pth", seed=None), name="landcover.yaml")

    card = load_card(checkpoint)  # a checkpoint path finds the card beside it
    loaded = load_model_from_card(card)
    fingerprint = card.fingerprint()

    assert card.source_path == card_path.resolve()
    assert loaded.config == model.config
    for a, b in zip(loaded.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert len(fingerprint) == 64
    assert load_card(card_path).fingerprint() == fingerprint

    torch.save(build_model(model.config, seed=10).state_dict(), checkpoint)
    assert load_card(card_path).fingerprint() != fingerprint


def test_card_beside_checkpoint_checked(tiny_upernet: FlexiMo, tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.pth"
    torch.save(tiny_upernet.state_dict(), checkpoint)  # 4 classes
    _write(tmp_path, _card_dict(weights="model.pth", seed=None), name="model.yaml")  # 10 classes

    with pytest.raises(ModelCardError, match="specifies num_classes=10.*num_classes=4"):
        load_model(checkpoint)


def test_card_names_missing_weights(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="names weights 'gone.pth'"):
        load_card(_write(tmp_path, _card_dict(weights="gone.pth", seed=None)))


def test_card_is_frozen() -> None:
    card = load_card(CARDS_DIR / "tiny_landcover_seeded.yaml")

    with pytest.raises(Exception, match="frozen"):
        card.name = "other"  # type: ignore[misc]
    assert isinstance(card, ModelCard)


def test_copied_card_resolves_relative_weights(tiny_upernet: FlexiMo, tmp_path: Path) -> None:
    source = tmp_path / "a"
    source.mkdir()
    torch.save(build_model(tiny_upernet.config.replace(num_classes=10), seed=2).state_dict(), source / "w.pth")
    _write(source, _card_dict(weights="w.pth", seed=None), name="card.yaml")
    target = tmp_path / "b"
    shutil.copytree(source, target)

    card = load_card(target / "card.yaml")

    assert card.weights_path() == (target / "w.pth").resolve()


def test_invalid_card_lists_one_line_per_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "name: bad\ntask: clouds\narchitecture: tiny_upernet\nweights: seeded-random\nsed: 3\n"
        "classes: [{id: 0, name: clear, color: '#000000'}, {id: 1, name: cloud, color: '#ffffff'}]\n"
        "wavelengths_um: [0.49, 0.56]\ninput_scaling: {kind: reflectance}\n"
        "reference_gsd_m: 10\nreference_patch_size: 16\ntoken_grid: 16\n"
    )
    with pytest.raises(ModelCardError) as raised:
        load_card(path)
    lines = str(raised.value).splitlines()
    assert lines[0] == f"model card {str(path)!r} is invalid:"
    assert "  task: Input should be 'landcover', 'cloud' or 'classification' (got 'clouds')" in lines
    assert any(line.startswith("  sed: unknown field") for line in lines)
    assert "errors.pydantic.dev" not in str(raised.value)


def test_stored_transform_of_reflectance_card() -> None:
    card = load_card(CARDS_DIR / "demo_cloud_tiny_seeded.yaml")

    transform = card.stored_input_transform([0.492, 0.835], 1e-4)

    assert transform.gain == (1e-4, 1e-4)
    assert transform.mean == pytest.approx((0.10, 0.24))
    assert transform.std == pytest.approx((0.08, 0.11))


def test_stored_transform_of_dofa_card_is_none() -> None:
    card = load_card(CARDS_DIR / "tiny_landcover_seeded.yaml")

    assert card.stored_input_transform([0.49, 0.56, 0.665], 1e-4) is None


@pytest.mark.parametrize(
    "gain, mean, std, match",
    [
        ((1.0,), (0.0, 0.0), (1.0,), "one value per band, got 1, 2 and 1"),
        ((1.0,), (float("nan"),), (1.0,), "mean must be finite"),
        ((1.0,), (0.0,), (0.0,), "std must be positive"),
    ],
)
def test_invalid_stored_transform_rejected(gain, mean, std, match) -> None:
    with pytest.raises(ValueError, match=match):
        StoredInputTransform(gain, mean, std)
