"""Metrics, ``fleximo evaluate`` on chip folders, and whole-scene evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner
from rasterio.transform import from_origin

from pipeline.model import build_model, preset_config
from workflows.chips import CLOUD_CLASSES, ChipDataset, ChipSpec, cut_chips, open_chips
from workflows.evaluate import evaluate_main, evaluate_scene, predict_scene
from workflows.training.metrics import confusion_matrix, segmentation_report
from workflows.training.model_setup import save_weights, write_model_card
from torch_threads import one_torch_thread  # noqa: F401  (autouse fixture)

# A hand-made two-class case: 50 clear pixels right, 10 clear called cloud,
# 5 cloud called clear, 35 cloud right.
HAND_CONFUSION = np.array([[50, 10], [5, 35]])
HAND = {
    "overall_accuracy": 85 / 100,
    "iou_clear": 50 / 65,
    "iou_cloud": 35 / 50,
    "precision_cloud": 35 / 45,
    "recall_cloud": 35 / 40,
    "f1_cloud": 70 / 85,
}


def test_report_matches_hand_computation() -> None:
    report = segmentation_report(HAND_CONFUSION, ["clear", "cloud"], positive_class=1)
    cloud = report.scores_of(1)

    assert report.overall_accuracy == pytest.approx(HAND["overall_accuracy"])
    assert report.scores_of(0).iou == pytest.approx(HAND["iou_clear"])
    assert cloud.iou == pytest.approx(HAND["iou_cloud"])
    assert cloud.precision == pytest.approx(HAND["precision_cloud"])
    assert cloud.recall == pytest.approx(HAND["recall_cloud"])
    assert cloud.f1 == pytest.approx(HAND["f1_cloud"])
    assert report.mean_iou == pytest.approx((HAND["iou_clear"] + HAND["iou_cloud"]) / 2)
    assert cloud.support == 40


def test_absent_class_left_out_of_mean() -> None:
    confusion = np.array([[4, 1, 0], [2, 3, 0], [0, 0, 0]])

    report = segmentation_report(confusion, ["a", "b", "c"])

    assert report.scores_of(2).iou is None
    assert report.scores_of(2).f1 is None
    assert report.mean_iou == pytest.approx((4 / 7 + 3 / 6) / 2)
    assert "n/a" in report.to_table()


def test_confusion_counts_and_ignores() -> None:
    reference = np.array([[0, 0, 1], [1, 255, 2]])
    predicted = np.array([[0, 1, 1], [2, 0, 2]])

    confusion = confusion_matrix(reference, predicted, 3)

    np.testing.assert_array_equal(confusion, [[1, 1, 0], [0, 1, 1], [0, 0, 1]])


def test_confusion_rejects_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"predicted class ids span 0\.\.3 but num_classes is 2"):
        confusion_matrix(np.zeros(4, int), np.arange(4), 2)
    with pytest.raises(ValueError, match="same shape"):
        confusion_matrix(np.zeros(4, int), np.zeros(5, int), 2)


def test_report_json_round_trip() -> None:
    report = segmentation_report(HAND_CONFUSION, ["clear", "cloud"], positive_class=1)

    document = json.loads(report.to_json())

    assert document["confusion_matrix"]["counts"] == HAND_CONFUSION.tolist()
    assert document["positive_class"]["f1"] == pytest.approx(HAND["f1_cloud"])
    assert document["pixels"] == 100


def _chip_folder(root: Path, masks: list[np.ndarray]) -> Path:
    """Write 10 x 10 px chips with the given masks, all in the val split."""
    spec = ChipSpec(name="hand", task="cloud", wavelengths_um=(0.49, 0.665, 0.865), gsd_m=10.0, value_scale=1e-4,
                    classes=CLOUD_CLASSES)
    side = masks[0].shape[0]
    image = np.full((3, side, side * len(masks)), 1000, dtype=np.uint16)
    label = np.concatenate(masks, axis=1).astype(np.uint8)
    cut_chips(image, label, root, spec, transform=from_origin(0, 100, 10, 10), crs="EPSG:32618", chip_size=side,
              block_size=side, val_fraction=0.5)
    return root


def test_evaluate_predictions_command_hand(tmp_path: Path) -> None:
    """Chips and predictions laid out so that the val confusion is exactly HAND_CONFUSION."""
    from workflows.cli import cli
    from workflows.finetune import register

    reference = np.zeros(100, np.uint8)
    reference[60:] = 1
    predicted = np.zeros(100, np.uint8)
    predicted[50:60] = 1
    predicted[65:] = 1
    masks = [reference.reshape(10, 10), np.zeros((10, 10), np.uint8)]
    chips_root = _chip_folder(tmp_path / "chips", masks)
    chips = open_chips(chips_root)
    predictions = tmp_path / "predictions"
    predictions.mkdir()
    for record in chips.records:
        array = predicted.reshape(10, 10) if record.split == "val" else np.zeros((10, 10), np.uint8)
        if record.split == "val":
            with rasterio.open(record.mask_path) as source:
                assert (source.read(1) == reference.reshape(10, 10)).all()
        with rasterio.open(predictions / f"{record.name}.tif", "w", driver="GTiff", height=10, width=10, count=1,
                           dtype="uint8", crs="EPSG:32618", transform=from_origin(0, 100, 10, 10)) as sink:
            sink.write(array[np.newaxis])
    register(cli)

    result = CliRunner().invoke(cli, ["evaluate", str(chips_root), "--predictions", str(predictions), "--json",
                                      "--output", str(tmp_path / "report")])

    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["confusion_matrix"]["counts"] == HAND_CONFUSION.tolist()
    assert document["overall_accuracy"] == pytest.approx(HAND["overall_accuracy"])
    assert document["positive_class"]["f1"] == pytest.approx(HAND["f1_cloud"])
    assert document["positive_class"]["iou"] == pytest.approx(HAND["iou_cloud"])
    assert json.loads((tmp_path / "report.json").read_text()) == document
    assert "confusion matrix" in (tmp_path / "report.txt").read_text()


def _seeded_card(folder: Path, spec: ChipSpec, patch_size: int = 4) -> Path:
    from pipeline.model import ReflectanceScaling

    model = build_model(preset_config("tiny_upernet", num_classes=spec.num_classes), seed=3)
    weights = save_weights(model, folder / "seeded.pth")
    return write_model_card(weights, name="seeded", description="test", chips=spec, config=model.config,
                            input_scaling=ReflectanceScaling(), patch_size=patch_size, token_grid=4)


def test_evaluate_card_matches_direct_run(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    masks = [rng.integers(0, 2, size=(16, 16)).astype(np.uint8) for _ in range(4)]
    chips_root = _chip_folder(tmp_path / "chips", masks)
    chips = open_chips(chips_root)
    card_path = _seeded_card(tmp_path, chips.spec)

    report = evaluate_main(chips_root, card=card_path, split=None, batch_size=3, device="cpu")

    from pipeline.model import load_card, load_model_from_card

    card = load_card(card_path)
    model = load_model_from_card(card)
    dataset = ChipDataset(chips, None)
    hand = np.zeros((2, 2), dtype=np.int64)
    for index in range(len(dataset)):
        reflectance, mask = dataset[index]
        with torch.no_grad():
            logits = model(card.prepare_input(reflectance[None], list(chips.spec.wavelengths_um)),
                           wavelengths_um=list(chips.spec.wavelengths_um), patch_size=4)
        predicted = logits.argmax(1)[0].numpy()
        for true_class in range(2):
            for predicted_class in range(2):
                hand[true_class, predicted_class] += int(((mask.numpy() == true_class) & (predicted == predicted_class)).sum())
    np.testing.assert_array_equal(report.confusion, hand)
    assert report.pixels == 4 * 16 * 16


def test_evaluate_requires_one_source(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one of card"):
        evaluate_main(tmp_path)


def test_evaluate_class_count_mismatch(tmp_path: Path) -> None:
    masks = [np.zeros((16, 16), np.uint8), np.zeros((16, 16), np.uint8)]
    chips_root = _chip_folder(tmp_path / "chips", masks)
    three = ChipSpec(name="x", task="landcover", wavelengths_um=(0.49, 0.665, 0.865), gsd_m=10.0,
                     classes=[{"id": 0, "name": "a"}, {"id": 1, "name": "b"}, {"id": 2, "name": "c"}])
    card_path = _seeded_card(tmp_path, three)

    with pytest.raises(ValueError, match="has 3 classes but the chips have 2"):
        evaluate_main(chips_root, card=card_path)


def test_predict_scene_one_tile_equals_model(tmp_path: Path) -> None:
    spec = ChipSpec(name="x", task="cloud", wavelengths_um=(0.49, 0.665, 0.865), gsd_m=10.0, classes=CLOUD_CLASSES)
    card_path = _seeded_card(tmp_path, spec)
    from pipeline.model import load_card, load_model_from_card

    card = load_card(card_path)
    scene = np.random.default_rng(5).random((3, 16, 16)).astype(np.float32)

    probabilities, patch = predict_scene(card, scene, spec.wavelengths_um, 10.0, device="cpu")

    model = load_model_from_card(card)
    with torch.no_grad():
        logits = model(torch.from_numpy(scene)[None], wavelengths_um=list(spec.wavelengths_um), patch_size=4)
    assert patch == 4
    np.testing.assert_allclose(probabilities, torch.softmax(logits, 1)[0].numpy(), atol=1e-5)


def test_evaluate_scene_patch_follows_gsd(tmp_path: Path) -> None:
    spec = ChipSpec(name="x", task="cloud", wavelengths_um=(0.49, 0.665, 0.865), gsd_m=10.0, classes=CLOUD_CLASSES)
    card = _seeded_card(tmp_path, spec, patch_size=8)
    from pipeline.model import load_card

    scene = np.random.default_rng(6).random((3, 50, 70)).astype(np.float32)
    label = np.zeros((50, 70), np.uint8)
    label[:5] = 255

    report, predicted = evaluate_scene(load_card(card), scene, label, spec.wavelengths_um, 5.0, device="cpu")
    _, patch = predict_scene(load_card(card), scene, spec.wavelengths_um, 5.0, device="cpu")

    assert patch == 16
    assert predicted.shape == (50, 70)
    assert report.pixels == 45 * 70
    assert set(np.unique(predicted)) <= {0, 1}
