"""Readers for chip folders laid out like SegMunich and GF12MS-WHU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from workflows.chips import ChipDataset, open_chips

# rasterio's window maths still multiplies Affine objects with `*`.
pytestmark = [pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning"),
              # SegMunich and GF12MS-WHU chips carry no georeferencing, as distributed.
              pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")]



def _write(path: Path, array: np.ndarray, interleave: str = "band") -> None:
    array = array if array.ndim == 3 else array[np.newaxis]
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", height=array.shape[1], width=array.shape[2], count=array.shape[0],
                       dtype=array.dtype, interleave=interleave) as sink:
        sink.write(array)


@pytest.fixture
def segmunich(tmp_path: Path) -> Path:
    """A SegMunich-style folder: 10-band pixel-interleaved chips, Corine-coded labels."""
    root = tmp_path / "SegMunich"
    rng = np.random.default_rng(1)
    labels = np.array([[0, 21, 22, 23], [31, 5, 32, 33], [41, 13, 14, 11], [12, 0, 0, 0]], dtype=np.uint8)
    for split, names in (("train", ["101", "102", "103"]), ("val", ["201"])):
        for name in names:
            image = rng.integers(0, 10000, size=(10, 4, 4), dtype=np.uint16)
            _write(root / split / "img" / f"{name}.tif", image, interleave="pixel")
            _write(root / split / "label" / f"{name}.tif", labels)
    (root / "dataset").mkdir()
    (root / "dataset" / "train.txt").write_text("101\n103.tif\n")
    return root


def test_segmunich_reader(segmunich: Path) -> None:
    chips = open_chips(segmunich, "segmunich")

    assert chips.counts() == {"train": 2, "val": 1, "test": 0}
    assert [r.name for r in chips.split("train")] == ["101", "103"]
    assert chips.spec.num_classes == 13
    assert chips.spec.gsd_m == 10.0
    assert chips.spec.wavelengths_um[7] == pytest.approx(0.865)
    assert chips.spec.task == "landcover"


def test_segmunich_labels_remapped(segmunich: Path) -> None:
    dataset = ChipDataset(open_chips(segmunich, "segmunich"), "val")

    reflectance, mask = dataset[0]

    expected = np.array([[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 0, 0, 0]])
    np.testing.assert_array_equal(mask.numpy(), expected)
    assert tuple(reflectance.shape) == (10, 4, 4)
    with rasterio.open(segmunich / "val" / "img" / "201.tif") as source:
        stored = source.read()
    np.testing.assert_allclose(reflectance.numpy(), stored * 1e-4, rtol=1e-6)


def test_segmunich_missing_label(segmunich: Path) -> None:
    (segmunich / "val" / "label" / "201.tif").unlink()

    with pytest.raises(FileNotFoundError, match="201"):
        open_chips(segmunich, "segmunich")


def test_segmunich_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="train/img"):
        open_chips(tmp_path, "segmunich")


@pytest.fixture
def gf12ms_whu(tmp_path: Path) -> Path:
    """A GF12MS-WHU-style folder: <n>.tiff images beside <n>_Mask.tif masks, per sensor and block."""
    root = tmp_path / "GF12MS-WHU"
    rng = np.random.default_rng(2)
    layout = {("GF1MS-WHU", "TrainBlock250"): 3, ("GF1MS-WHU", "TestBlock250"): 2, ("GF2MS-WHU", "TrainBlock250"): 1}
    for (sensor, block), count in layout.items():
        for index in range(count):
            image = rng.integers(0, 1024, size=(4, 6, 6), dtype=np.uint16)
            mask = (image[0] > 512).astype(np.uint8)
            _write(root / sensor / block / f"{index}.tiff", image)
            _write(root / sensor / block / f"{index}_Mask.tif", mask)
    return root


def test_gf12ms_whu_reader(gf12ms_whu: Path) -> None:
    gf1 = open_chips(gf12ms_whu, "gf12ms-whu", sensor="gf1", value_scale=1 / 1023)
    gf2 = open_chips(gf12ms_whu / "GF2MS-WHU", "gf12ms-whu", sensor="gf2", value_scale=1 / 1023)

    assert gf1.counts() == {"train": 3, "val": 2, "test": 0}
    assert gf2.counts() == {"train": 1, "val": 0, "test": 0}
    assert gf1.spec.gsd_m == 8.0
    assert gf2.spec.gsd_m == 4.0
    assert gf1.spec.wavelengths_um == pytest.approx((0.485, 0.555, 0.66, 0.83))
    assert gf1.spec.positive_class == 1


def test_gf12ms_whu_pairs(gf12ms_whu: Path) -> None:
    dataset = ChipDataset(open_chips(gf12ms_whu, "gf12ms-whu", sensor="gf1", value_scale=1 / 1023), "val")

    for index in range(len(dataset)):
        reflectance, mask = dataset[index]
        np.testing.assert_array_equal((reflectance[0] * 1023 > 512).numpy(), mask.numpy() == 1)


def test_gf12ms_whu_errors(gf12ms_whu: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown GF12MS-WHU sensor 'gf7'"):
        open_chips(gf12ms_whu, "gf12ms-whu", sensor="gf7", value_scale=1.0)
    with pytest.raises(FileNotFoundError, match="GF2MS-WHU"):
        open_chips(tmp_path / "nowhere", "gf12ms-whu", sensor="gf2", value_scale=1.0)
    with pytest.raises(TypeError, match="value_scale"):
        open_chips(gf12ms_whu, "gf12ms-whu", sensor="gf1")


def test_unknown_layout(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown chip layout 'coco'"):
        open_chips(tmp_path, "coco")  # type: ignore[arg-type]
