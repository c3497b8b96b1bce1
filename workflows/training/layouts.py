"""Readers for public chip datasets laid out as they are distributed.

* SegMunich (Sentinel-2 land cover around Munich, 128 × 128 px chips at
  10 m, 10 bands, 13 classes), as the DOFA segmentation example arranges it::

      SegMunich/train/img/<id>.tif    SegMunich/train/label/<id>.tif (or .png)
      SegMunich/val/img/<id>.tif      SegMunich/val/label/<id>.tif
      SegMunich/dataset/train.txt     optional: ids to use, one per line
      SegMunich/dataset/val.txt

  Masks store Corine-style codes for some classes (21, 22, 23, 31, 32, 33,
  41, 13, 14), which are remapped here to the 13 class ids. Images store L1C
  reflectance × 10000.

* GF12MS-WHU (Gaofen-1 PMS 8 m and Gaofen-2 PMS 4 m cloud chips, 250 × 250 px,
  4 bands blue/green/red/NIR)::

      GF12MS-WHU/GF1MS-WHU/TrainBlock250/<n>.tiff + <n>_Mask.tif
      GF12MS-WHU/GF1MS-WHU/TestBlock250/<n>.tiff  + <n>_Mask.tif
      GF12MS-WHU/GF2MS-WHU/...

  Masks are 0 clear, 1 cloud. The dataset has no validation folder, and its
  test blocks come from other scenes than its training blocks, so they are
  served as the ``"val"`` split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from catalog.sensors import GF1_PMS, SENTINEL2_MSI
from workflows.training.chip_dataset import IMAGE_SUFFIXES, ChipRecord, ChipSet
from workflows.training.chip_spec import ChipClass, ChipSpec

SEGMUNICH_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B11", "B12")
SEGMUNICH_WAVELENGTHS_UM = tuple(float(SENTINEL2_MSI.find_band(b).wavelength_um) for b in SEGMUNICH_BANDS)  # type: ignore[union-attr, arg-type]
SEGMUNICH_CLASSES = (
    ("background", "#000000"),
    ("arable land", "#f423e8"),
    ("permanent crops", "#464646"),
    ("pastures", "#66669c"),
    ("forests", "#be9999"),
    ("surface water", "#999999"),
    ("shrub", "#faaa1e"),
    ("open spaces", "#dcdc00"),
    ("wetlands", "#6b8e23"),
    ("mine dump", "#98fb98"),
    ("artificial vegetation", "#4682b4"),
    ("urban fabric", "#dc143c"),
    ("buildings", "#ff0000"),
)
SEGMUNICH_LABEL_MAP = {21: 1, 22: 2, 23: 3, 31: 4, 32: 6, 33: 7, 41: 8, 13: 9, 14: 10}

# GF-1 PMS and GF-2 PMS share the multispectral band design (blue, green,
# red, NIR). The dataset states 8 m and 4 m for its GF-1 and GF-2 chips.
GAOFEN_MS_WAVELENGTHS_UM = tuple(float(GF1_PMS.find_band(b).wavelength_um) for b in ("B1", "B2", "B3", "B4"))  # type: ignore[union-attr, arg-type]
GF12MS_WHU_SENSORS = {"gf1": ("GF1MS-WHU", 8.0), "gf2": ("GF2MS-WHU", 4.0)}


def read_segmunich(root: str | Path) -> ChipSet:
    """Read a SegMunich folder (``train/``, ``val/`` or ``test/`` with ``img/`` and ``label/``).

    Raises
    ------
    FileNotFoundError
        If no split folder with ``img/`` exists, or an image has no label.
    """
    root_path = Path(root)
    records = []
    for split in ("train", "val", "test"):
        image_dir = root_path / split / "img"
        if not image_dir.is_dir():
            continue
        listed = _read_id_list(root_path / "dataset" / f"{split}.txt")
        for image_path in sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            if listed is not None and image_path.stem not in listed:
                continue
            mask_path = _find_file(root_path / split / "label", image_path.stem, (".tif", ".png"))
            records.append(ChipRecord(image_path.stem, image_path, mask_path, split))  # type: ignore[arg-type]
    if not records:
        raise FileNotFoundError(
            f"no SegMunich chips under {root_path}; expected train/img/*.tif and train/label/*.tif"
        )

    spec = ChipSpec(
        name="segmunich",
        task="landcover",
        bands=SEGMUNICH_BANDS,
        wavelengths_um=SEGMUNICH_WAVELENGTHS_UM,
        gsd_m=10.0,
        value_scale=1.0e-4,
        classes=tuple(ChipClass(id=i, name=n, color=c) for i, (n, c) in enumerate(SEGMUNICH_CLASSES)),
        label_map=SEGMUNICH_LABEL_MAP,
    )
    return ChipSet(spec=spec, records=tuple(records), root=root_path)


def read_gf12ms_whu(root: str | Path, sensor: Literal["gf1", "gf2"], value_scale: float) -> ChipSet:
    """Read the GF1MS-WHU or GF2MS-WHU part of a GF12MS-WHU folder.

    Parameters
    ----------
    root
        The ``GF12MS-WHU`` folder (holding ``GF1MS-WHU/`` and ``GF2MS-WHU/``)
        or one sensor's folder.
    sensor
        ``"gf1"`` (8 m) or ``"gf2"`` (4 m); one chip set has one GSD.
    value_scale
        Factor from stored value to reflectance. The dataset does not state
        its radiometric scaling, so there is no default: check the value
        range of your copy (e.g. ``1e-4`` for reflectance × 10000).
    """
    if sensor not in GF12MS_WHU_SENSORS:
        raise ValueError(f"unknown GF12MS-WHU sensor {sensor!r}; expected one of {sorted(GF12MS_WHU_SENSORS)}")
    folder_name, gsd_m = GF12MS_WHU_SENSORS[sensor]
    root_path = Path(root)
    sensor_dir = root_path if root_path.name == folder_name else root_path / folder_name
    if not sensor_dir.is_dir():
        raise FileNotFoundError(f"{sensor_dir} not found; expected {folder_name}/ under {root_path}")

    records = []
    for block_dir in sorted(p for p in sensor_dir.iterdir() if p.is_dir()):
        if block_dir.name.startswith("TrainBlock"):
            split = "train"
        elif block_dir.name.startswith("TestBlock"):
            split = "val"
        else:
            continue
        for mask_path in sorted(block_dir.glob("*_Mask.tif")):
            stem = mask_path.name[: -len("_Mask.tif")]
            image_path = _find_file(block_dir, stem, (".tiff", ".tif"))
            records.append(ChipRecord(f"{block_dir.name}_{stem}", image_path, mask_path, split, block_dir.name))  # type: ignore[arg-type]
    if not records:
        raise FileNotFoundError(
            f"no GF12MS-WHU chips under {sensor_dir}; expected TrainBlock*/<n>.tiff with <n>_Mask.tif"
        )

    # NOTE: the band order blue, green, red, NIR is the dataset's documented
    # order; a copy re-exported in another order needs its own chips.yaml.
    spec = ChipSpec(
        name=f"{folder_name.lower()}",
        task="cloud",
        bands=("blue", "green", "red", "nir"),
        wavelengths_um=GAOFEN_MS_WAVELENGTHS_UM,
        gsd_m=gsd_m,
        value_scale=value_scale,
        classes=(ChipClass(id=0, name="clear", color="#80c080"), ChipClass(id=1, name="cloud", color="#ffffff")),
    )
    return ChipSet(spec=spec, records=tuple(records), root=root_path)


def _read_id_list(path: Path) -> set[str] | None:
    if not path.is_file():
        return None
    return {Path(line.strip()).stem for line in path.read_text().splitlines() if line.strip()}


def _find_file(folder: Path, stem: str, suffixes: tuple[str, ...]) -> Path:
    for suffix in suffixes:
        candidate = folder / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no file {stem}{{{','.join(suffixes)}}} in {folder}")
