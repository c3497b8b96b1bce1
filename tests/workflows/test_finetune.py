"""Fine-tuning: loss, checkpoints with cards, resuming, starting weights, torchrun."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from rasterio.transform import from_origin

from pipeline.model import build_model, load_card, load_model, load_model_from_card, preset_config, read_state_dict
from pipeline.model.scaling import ReflectanceScaling
from workflows.chips import CLOUD_CLASSES, ChipSpec, cut_chips
from workflows.evaluate import evaluate_main
from workflows.finetune import finetune_main
from workflows.training.config import load_finetune_config
from workflows.training.loop import class_weights, lr_factor
from workflows.training.model_setup import save_weights, write_model_card
from torch_threads import one_torch_thread  # noqa: F401  (autouse fixture)

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def chip_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 px chips of a 64 x 96 px scene whose bright squares are the 'cloud' class."""
    rng = np.random.default_rng(0)
    image = rng.integers(300, 1500, size=(3, 64, 96), dtype=np.uint16)
    label = np.zeros((64, 96), dtype=np.uint8)
    for _ in range(14):
        row, col = rng.integers(0, 56, size=2)
        col = int(col * 96 / 64)
        size = int(rng.integers(3, 8))
        label[row : row + size, col : col + size] = 1
    image[:, label == 1] += 5000
    spec = ChipSpec(name="bright-squares", task="cloud", wavelengths_um=(0.49, 0.665, 0.865), gsd_m=10.0,
                    value_scale=1e-4, classes=CLOUD_CLASSES)
    root = tmp_path_factory.mktemp("chips")
    cut_chips(image, label, root, spec, transform=from_origin(600000, 4000000, 10, 10), crs="EPSG:32618",
              chip_size=16, block_size=32, val_fraction=0.25)
    return root


def _config(chip_root: Path, output: Path, **train: Any) -> dict[str, Any]:
    settings = {"epochs": 50, "batch_size": 8, "lr": 3e-3, "freeze_backbone": False, "backbone_lr": 3e-3,
                "warmup_fraction": 0.0, "device": "cpu", "val_every_epochs": 3}
    settings.update(train)
    return {
        "name": "tiny_cloud",
        "chips": {"root": str(chip_root)},
        "init": {"source": "scratch", "preset": "tiny_upernet", "reference_patch_size": 8, "seed": 1},
        "train": settings,
        "output": str(output),
    }


def test_training_lowers_loss_and_writes_card(chip_root: Path, tmp_path: Path) -> None:
    result = finetune_main(_config(chip_root, tmp_path / "run", max_steps=14))

    losses = [entry["loss"] for entry in result.history if "loss" in entry]
    assert len(losses) == 14
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3])
    assert result.steps == 14
    assert result.patch_size == 8

    card = load_card(result.card_path)
    assert card.weights_path() == tmp_path / "run" / "tiny_cloud.pth"
    assert card.reference_gsd_m == 10.0
    assert card.reference_patch_size == 8
    assert card.token_grid == 2
    assert card.class_names == ["clear", "cloud"]
    assert card.wavelengths_um == [0.49, 0.665, 0.865]
    model = load_model(card.weights_path())
    assert model.config.num_classes == 2
    assert model.config.head == "upernet"
    assert result.best_card_path is not None
    assert load_card(result.best_card_path).weights_path().is_file()
    assert (tmp_path / "run" / "history.jsonl").is_file()


def test_pixel_skip_card_round_trip(chip_root: Path, tmp_path: Path) -> None:
    config = _config(chip_root, tmp_path / "run", max_steps=4)
    config["init"]["architecture"] = {"pixel_skip_channels": 8}

    result = finetune_main(config)

    card = load_card(result.card_path)
    assert card.architecture.pixel_skip_channels == 8
    model = load_model_from_card(card)
    assert model.config.pixel_skip_channels == 8
    with torch.no_grad():
        logits = model(torch.rand(1, 3, 16, 16), wavelengths_um=card.wavelengths_um, patch_size=8)
    assert logits.shape == (1, 2, 16, 16)


def test_card_scores_match_training_validation(chip_root: Path, tmp_path: Path) -> None:
    result = finetune_main(_config(chip_root, tmp_path / "run", max_steps=6))

    report = evaluate_main(chip_root, card=result.card_path, device="cpu")

    assert result.final_report is not None
    np.testing.assert_array_equal(report.confusion, result.final_report.confusion)


class _Interrupt(Exception):
    pass


def _interrupt_at(step: int):  # type: ignore[no-untyped-def]
    def progress(event: str, info: dict[str, Any]) -> None:
        if event == "step" and info["step"] == step:
            raise _Interrupt

    return progress


def test_resume_continues_from_saved_step(chip_root: Path, tmp_path: Path) -> None:
    config = _config(chip_root, tmp_path / "resumed", max_steps=6)
    with pytest.raises(_Interrupt):
        finetune_main(config, progress=_interrupt_at(5))
    saved = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    assert saved["step"] == 4

    resumed = finetune_main(config)
    straight = finetune_main(_config(chip_root, tmp_path / "straight", max_steps=6))

    resumed_steps = [entry["step"] for entry in resumed.history if "loss" in entry]
    assert resumed_steps == list(range(1, 7))
    assert resumed.steps == 6
    resumed_state = read_state_dict(tmp_path / "resumed" / "tiny_cloud.pth")
    straight_state = read_state_dict(tmp_path / "straight" / "tiny_cloud.pth")
    for key, value in straight_state.items():
        torch.testing.assert_close(resumed_state[key], value, msg=f"{key} differs after resuming")


def test_no_resume_starts_over(chip_root: Path, tmp_path: Path) -> None:
    finetune_main(_config(chip_root, tmp_path / "run", max_steps=3))

    again = finetune_main(_config(chip_root, tmp_path / "run", max_steps=2), resume=False)

    assert [entry["step"] for entry in again.history if "loss" in entry] == [1, 2]


def _checkpoint_with_card(folder: Path, num_classes: int, *, keep_head: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model = build_model(preset_config("tiny_upernet", num_classes=num_classes), seed=9)
    weights = save_weights(model, folder / "earlier.pth")
    if not keep_head:
        state = {k: v for k, v in torch.load(weights, weights_only=True).items()
                 if not k.startswith(("conv0", "conv1", "conv2", "conv3", "decoder", "cls_seg"))}
        torch.save(state, weights)
        return weights
    classes = [{"id": i, "name": f"class{i}", "color": "#102030"} for i in range(num_classes)]
    spec = ChipSpec(name="earlier", task="landcover", wavelengths_um=(0.49, 0.665, 0.865), gsd_m=20.0, classes=classes)
    write_model_card(weights, name="earlier", description="test", chips=spec, config=model.config,
                     input_scaling=ReflectanceScaling(), patch_size=4, token_grid=4)
    return weights


def test_start_from_fleximo_checkpoint(chip_root: Path, tmp_path: Path) -> None:
    weights = _checkpoint_with_card(tmp_path / "earlier", num_classes=5)
    config = _config(chip_root, tmp_path / "run", max_steps=2, freeze_backbone=True)
    config["init"] = {"source": "checkpoint", "checkpoint": str(weights)}

    result = finetune_main(config)

    before = read_state_dict(weights)
    after = read_state_dict(result.card_path.with_suffix(".pth"))
    assert result.patch_size == 8
    assert load_card(result.card_path).reference_patch_size == 8
    torch.testing.assert_close(after["blocks.0.attn.qkv.weight"], before["blocks.0.attn.qkv.weight"])
    torch.testing.assert_close(after["patch_embed.weight_generator.fc_weight.weight"],
                               before["patch_embed.weight_generator.fc_weight.weight"])
    assert after["cls_seg.0.weight"].shape[0] == 2
    assert not torch.equal(after["decoder.conv_x1.weight"], before["decoder.conv_x1.weight"])


def test_start_from_backbone_needs_scaling(chip_root: Path, tmp_path: Path) -> None:
    weights = _checkpoint_with_card(tmp_path / "backbone", num_classes=5, keep_head=False)
    config = _config(chip_root, tmp_path / "run", max_steps=2, freeze_backbone=True)
    config["init"] = {"source": "checkpoint", "checkpoint": str(weights), "reference_gsd_m": 10.0,
                      "reference_patch_size": 8}

    with pytest.raises(ValueError, match="input scaling is unknown"):
        finetune_main(config)

    config["init"]["input_scaling"] = {"kind": "reflectance"}
    result = finetune_main(config)
    after = read_state_dict(result.card_path.with_suffix(".pth"))
    before = read_state_dict(weights)
    torch.testing.assert_close(after["blocks.1.mlp.fc2.weight"], before["blocks.1.mlp.fc2.weight"])
    assert after["cls_seg.0.weight"].shape[0] == 2


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"init": {"source": "checkpoint"}}, "neither init.checkpoint nor init.card"),
        ({"init": {"source": "scratch"}}, "set init.preset"),
        ({"name": "bad name"}, "name"),
        ({"train": {"learning_rate": 0.1}}, "learning_rate"),
        ({"train": {"class_weights": "median"}}, "class_weights"),
    ],
)
def test_config_rejects(chip_root: Path, tmp_path: Path, document: dict[str, Any], message: str) -> None:
    config = _config(chip_root, tmp_path)
    for key, value in document.items():
        config[key] = value

    with pytest.raises(ValueError, match=message):
        load_finetune_config(config)


def test_config_paths_relative_to_file(tmp_path: Path) -> None:
    (tmp_path / "cfg").mkdir()
    path = tmp_path / "cfg" / "run.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "chips": {"root": "chips"}, "init": {"preset": "tiny_upernet"},
                                    "output": "out"}))

    config = load_finetune_config(path)

    assert config.chips.root == tmp_path / "cfg" / "chips"
    assert config.output == tmp_path / "cfg" / "out"


def test_task_mismatch_rejected(chip_root: Path, tmp_path: Path) -> None:
    config = _config(chip_root, tmp_path / "run", max_steps=1)
    config["task"] = "landcover"

    with pytest.raises(ValueError, match="differs from the chips' task 'cloud'"):
        finetune_main(config)


@pytest.mark.parametrize(
    ("counts", "rule", "expected"),
    [
        ([90, 10], "none", None),
        ([75, 25], "inverse-sqrt", [1 / math.sqrt(0.75), 1 / math.sqrt(0.25)]),
        ([50, 50], "enet", [1.0, 1.0]),
        ([1, 2, 3], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0]),
    ],
)
def test_class_weights_table(counts: list[int], rule: Any, expected: list[float] | None) -> None:
    weights = class_weights(np.array(counts), rule)

    if expected is None:
        assert weights is None
        return
    if rule in ("inverse-sqrt", "enet"):
        share = np.array(counts) / sum(counts)
        expected_array = np.array(expected) / (np.array(expected) * share).sum()
        np.testing.assert_allclose(weights.numpy(), expected_array, rtol=1e-6)
    else:
        np.testing.assert_allclose(weights.numpy(), expected)


def test_rare_class_weight_capped() -> None:
    weights = class_weights(np.array([10_000_000, 1]), "inverse-sqrt")

    assert float(weights[1]) == 50.0


@pytest.mark.parametrize(
    ("step", "total", "warmup", "expected"),
    [(0, 100, 10, 0.1), (9, 100, 10, 1.0), (10, 100, 10, 1.0), (55, 100, 10, 0.505), (100, 100, 10, 0.01),
     (0, 10, 0, 1.0)],
)
def test_lr_schedule_table(step: int, total: int, warmup: int, expected: float) -> None:
    assert lr_factor(step, total, warmup, 0.01) == pytest.approx(expected, abs=1e-3)


def test_finetune_command(chip_root: Path, tmp_path: Path) -> None:
    from workflows.cli import cli
    from workflows.finetune import register

    path = tmp_path / "finetune.yaml"
    path.write_text(yaml.safe_dump(_config(chip_root, tmp_path / "ignored", max_steps=2)))
    register(cli)

    result = CliRunner().invoke(cli, ["finetune", str(path), "--output", str(tmp_path / "cli_run")])

    assert result.exit_code == 0, result.output
    assert "tiny_cloud.yaml" in result.stdout
    assert (tmp_path / "cli_run" / "tiny_cloud.yaml").is_file()
    assert not (tmp_path / "ignored").exists()


@pytest.mark.slow
def test_torchrun_two_processes(chip_root: Path, tmp_path: Path) -> None:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun is not installed beside this Python")
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(_config(chip_root, tmp_path / "ddp", epochs=2, batch_size=4)))
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}

    completed = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(29500 + os.getpid() % 1000),
         "-m", "workflows.finetune", str(path)],
        cwd=PROJECT_ROOT, env=environment, capture_output=True, text=True, timeout=300,
    )

    assert completed.returncode == 0, completed.stderr[-3000:]
    history = [json.loads(line) for line in (tmp_path / "ddp" / "history.jsonl").read_text().splitlines()]
    train_chips = sum(1 for line in (chip_root / "splits.csv").read_text().splitlines()[1:] if ",train," in line)
    steps_per_epoch = math.ceil(math.ceil(train_chips / 2) / 4)
    assert max(entry["step"] for entry in history) == 2 * steps_per_epoch
    assert load_card(tmp_path / "ddp" / "tiny_cloud.yaml").weights_path().is_file()


def test_example_configs_validate() -> None:
    paths = sorted((PROJECT_ROOT / "workflows" / "jobs").glob("finetune_*.yaml"))

    assert len(paths) >= 3
    for path in paths:
        config = load_finetune_config(path)
        assert config.name
        assert config.output.is_absolute()


def test_demo_cloud_config_validates(tmp_path: Path) -> None:
    from workflows.training.demo_cloud import DEMO_CLOUD_NAME, demo_cloud_config

    config = load_finetune_config(demo_cloud_config(tmp_path / "chips", tmp_path / "run"))

    assert config.name == DEMO_CLOUD_NAME
    assert config.init.reference_patch_size == 12
    assert config.chips.root == tmp_path / "chips"


def test_demo_cloud_existing_card_kept(tmp_path: Path) -> None:
    from workflows.training.demo_cloud import demo_description, ensure_demo_cloud_model

    text = yaml.safe_dump({"name": "kept", "description": demo_description()})
    (tmp_path / "demo_cloud_l8.yaml").write_text(text)
    (tmp_path / "demo_cloud_l8.pth").write_bytes(b"")

    assert ensure_demo_cloud_model(tmp_path) == tmp_path / "demo_cloud_l8.yaml"
    assert (tmp_path / "demo_cloud_l8.yaml").read_text() == text


@pytest.mark.parametrize(
    "document", ["name: old\ndescription: an earlier recipe\n", "name: [unclosed\n", "- a list\n"]
)
def test_older_demo_recipe_not_current(tmp_path: Path, document: str) -> None:
    from workflows.training.demo_cloud import is_current_demo_card

    card = tmp_path / "demo_cloud_l8.yaml"
    card.write_text(document)
    card.with_suffix(".pth").write_bytes(b"")

    assert not is_current_demo_card(card)


def test_demo_card_without_weights_not_current(tmp_path: Path) -> None:
    from workflows.training.demo_cloud import demo_description, is_current_demo_card

    card = tmp_path / "demo_cloud_l8.yaml"
    card.write_text(yaml.safe_dump({"description": demo_description()}))

    assert not is_current_demo_card(card)


def test_demo_training_logs_every_tenth_step(caplog):
    from workflows.resolve import _TrainingLog

    log = _TrainingLog()
    with caplog.at_level("INFO", logger="workflows.resolve"):
        log("start", {"total_steps": 990, "step": 0})
        for step in range(1, 991):
            log("step", {"step": step, "loss": 1.0 / step, "lr": 1e-3})

    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 10
    assert lines[0] == "training the demo cloud model: step 99 of 990, loss 0.0101"
    assert lines[-1].startswith("training the demo cloud model: step 990 of 990")
