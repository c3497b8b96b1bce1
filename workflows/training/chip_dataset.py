"""Chip sets: image/mask GeoTIFF pairs with their spec, as a PyTorch dataset.

A :class:`ChipSet` is the list of chips a reader found (each with its split
and the scene block it came from) plus the :class:`ChipSpec` that describes
what the values mean. :class:`ChipDataset` serves one split of it as
``(reflectance (C, H, W) float32, mask (H, W) int64)`` pairs, with
reflectance already scaled to 0-1 and nodata pixels masked out.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import rasterio
import torch
from torch.utils.data import Dataset

from workflows.training.chip_spec import ChipSpec, load_chip_spec

logger = logging.getLogger(__name__)

Split = Literal["train", "val", "test"]
SPLITS: tuple[str, ...] = ("train", "val", "test")
IMAGE_SUFFIXES = (".tif", ".tiff")


@dataclasses.dataclass(frozen=True)
class ChipRecord:
    """One chip: its image and mask files, split, and the scene block it was cut from.

    ``block`` is a free-form id (e.g. ``"r2c1"``); chips of one block always
    share a split, which is what keeps validation spatially honest.
    """

    name: str
    image_path: Path
    mask_path: Path
    split: Split = "train"
    block: str = ""


@dataclasses.dataclass(frozen=True)
class ChipSet:
    """Chips found by a reader, and the spec that describes them."""

    spec: ChipSpec
    records: tuple[ChipRecord, ...]
    root: Path

    def split(self, split: Split) -> tuple[ChipRecord, ...]:
        """Return the records of one split."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        return tuple(record for record in self.records if record.split == split)

    def counts(self) -> dict[str, int]:
        """Return the number of chips per split."""
        return {split: len(self.split(split)) for split in SPLITS}  # type: ignore[arg-type]


def read_splits_file(path: Path) -> dict[str, tuple[Split, str]]:
    """Read a ``splits.csv`` (columns ``name,split,block``) into ``name -> (split, block)``."""
    table: dict[str, tuple[Split, str]] = {}
    with path.open(newline="") as handle:
        for line_number, row in enumerate(csv.DictReader(handle), start=2):
            split = row.get("split", "")
            if split not in SPLITS:
                raise ValueError(
                    f"{path}:{line_number}: split {split!r} of chip {row.get('name')!r} is not one of {SPLITS}"
                )
            table[row["name"]] = (split, row.get("block", "") or "")  # type: ignore[assignment]
    return table


def write_splits_file(records: Iterable[ChipRecord], path: Path) -> None:
    """Write ``name,split,block`` rows of ``records`` to ``path``."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "split", "block"])
        for record in records:
            writer.writerow([record.name, record.split, record.block])


def read_generic_chips(root: str | Path) -> ChipSet:
    """Read a chip folder in the generic layout (``chips.yaml``, images/, masks/).

    Chips without a row in the spec's ``splits`` file, or every chip when the
    spec names none, are put in ``"train"``; pass the set through
    :func:`workflows.training.cutter.split_by_position` to hold out blocks.

    Raises
    ------
    FileNotFoundError
        If ``chips.yaml``, the image folder or a matching mask is missing.
    """
    root_path = Path(root)
    spec = load_chip_spec(root_path)
    image_dir = root_path / spec.images
    mask_dir = root_path / spec.masks
    for folder, field in ((image_dir, "images"), (mask_dir, "masks")):
        if not folder.is_dir():
            raise FileNotFoundError(f"{field} folder {folder} not found; set `{field}:` in {root_path / 'chips.yaml'}")

    splits = read_splits_file(root_path / spec.splits) if spec.splits else {}
    records = []
    for image_path in sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        mask_path = mask_dir / image_path.name
        if not mask_path.is_file():
            raise FileNotFoundError(
                f"image chip {image_path.name} has no mask {mask_path}; masks need the image's file name"
            )
        split, block = splits.get(image_path.stem, ("train", ""))
        records.append(ChipRecord(image_path.stem, image_path, mask_path, split, block))

    if not records:
        raise FileNotFoundError(f"no .tif chips in {image_dir}")
    return ChipSet(spec=spec, records=tuple(records), root=root_path)


def _label_lookup(spec: ChipSpec) -> np.ndarray:
    """Table from stored mask value (0-65535) to class id; unknown values map to 65535."""
    lookup = np.full(65536, 65535, dtype=np.uint16)
    for chip_class in spec.classes:
        lookup[chip_class.id] = chip_class.id
    lookup[spec.ignore_index] = spec.ignore_index
    for stored, class_id in spec.label_map.items():
        lookup[stored] = class_id
    return lookup


class ChipDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """One split of a chip set as ``(reflectance, mask)`` tensors.

    Parameters
    ----------
    chips
        The chip set.
    split
        Which split to serve; ``None`` serves every chip.
    augment
        Random flips and 90° rotations, for training.
    cache
        Keep every decoded chip in memory after its first read (chip sets for
        fine-tuning are usually small; disable for large ones).

    Items are ``reflectance`` ``(C, H, W)`` float32 (0-1, nodata pixels set
    to 0) and ``mask`` ``(H, W)`` int64 class ids, with ``ignore_index`` on
    unlabelled and nodata pixels.
    """

    def __init__(
        self,
        chips: ChipSet,
        split: Split | None = "train",
        *,
        augment: bool = False,
        cache: bool = True,
    ) -> None:
        self.spec = chips.spec
        self.records: Sequence[ChipRecord] = chips.records if split is None else chips.split(split)
        self.augment = augment
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None
        self._lookup = _label_lookup(self.spec)

    def __len__(self) -> int:
        return len(self.records)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Read and decode chip ``index`` as ``(reflectance (C, H, W) float32, mask (H, W) int64)``."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]

        record = self.records[index]
        with rasterio.open(record.image_path) as source:
            stored = source.read()
        with rasterio.open(record.mask_path) as source:
            stored_mask = source.read(1)
        expected_bands = len(self.spec.wavelengths_um)
        if stored.shape[0] != expected_bands:
            raise ValueError(
                f"chip {record.image_path} has {stored.shape[0]} bands but the spec gives "
                f"{expected_bands} wavelengths; fix wavelengths_um or the chip"
            )
        if stored.shape[1:] != stored_mask.shape:
            raise ValueError(
                f"chip {record.image_path} is {stored.shape[1:]} px but its mask is {stored_mask.shape} px"
            )

        mask = self._lookup[stored_mask.astype(np.int64)].astype(np.int64)
        unknown = mask == 65535
        if unknown.any():
            values = sorted(set(np.unique(stored_mask[unknown]).tolist()))[:10]
            raise ValueError(
                f"mask {record.mask_path} contains values {values} that are neither class ids nor "
                f"ignore_index {self.spec.ignore_index}; add them to label_map in chips.yaml"
            )

        reflectance = stored.astype(np.float32) * self.spec.value_scale + self.spec.value_offset
        if self.spec.nodata is not None:
            missing = np.any(stored == self.spec.nodata, axis=0)
            reflectance[:, missing] = 0.0
            mask[missing] = self.spec.ignore_index
        reflectance = np.nan_to_num(reflectance, nan=0.0, posinf=0.0, neginf=0.0)

        if self._cache is not None:
            self._cache[index] = (reflectance, mask)
        return reflectance, mask

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        reflectance, mask = self.read(index)
        if self.augment:
            rotations = int(torch.randint(0, 4, ()).item())
            reflectance = np.rot90(reflectance, rotations, axes=(1, 2))
            mask = np.rot90(mask, rotations, axes=(0, 1))
            if torch.rand(()) < 0.5:
                reflectance = reflectance[:, :, ::-1]
                mask = mask[:, ::-1]
        return torch.from_numpy(np.ascontiguousarray(reflectance)), torch.from_numpy(np.ascontiguousarray(mask))

    def class_pixel_counts(self) -> np.ndarray:
        """Count labelled pixels per class over the whole split, ``(K,)`` int64."""
        counts = np.zeros(self.spec.num_classes, dtype=np.int64)
        for index in range(len(self)):
            _, mask = self.read(index)
            labelled = mask[mask != self.spec.ignore_index]
            counts += np.bincount(labelled, minlength=self.spec.num_classes)[: self.spec.num_classes]
        return counts
