"""The YAML file that describes a folder of training chips.

A chip folder contains image GeoTIFFs and mask GeoTIFFs with matching names
and one ``chips.yaml`` that describes what the pixels mean::

    name: l8-cloud
    task: cloud                 # landcover | cloud
    images: images              # folder of image chips, relative to the YAML
    masks: masks                # folder of mask chips with the same file names
    sensor: landsat-oli         # optional: a catalog sensor table ...
    bands: [B1, B2, B3, B4, B5, B6, B7]     # ... whose bands give wavelengths_um
    wavelengths_um: [0.443, 0.482, 0.562, 0.655, 0.865, 1.609, 2.201]
    gsd_m: 30
    value_scale: 2.0e-5         # reflectance = stored * value_scale + value_offset
    value_offset: -0.1
    nodata: 0                   # stored image value of missing pixels, or null
    ignore_index: 255           # mask value of unlabelled pixels
    label_map: {}               # optional stored mask value -> class id
    classes:
      - {id: 0, name: clear, color: "#3c8c3c"}
      - {id: 1, name: cloud, color: "#ffffff"}
    splits: splits.csv          # optional: chip name -> train/val and block

The file is validated once, here, into a :class:`ChipSpec`; readers and the
training loop trust it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from catalog.sensors import SENSORS

SPEC_NAME = "chips.yaml"

ChipTask = Literal["landcover", "cloud"]


class ChipClass(BaseModel):
    """One class of the masks: its id (the mask value after ``label_map``), name and colour."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: int = Field(ge=0, le=254)
    name: str
    color: str = "#808080"


class ChipSpec(BaseModel):
    """Validated contents of a ``chips.yaml``; see the module docstring for the fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    task: ChipTask
    images: str = "images"
    masks: str = "masks"
    sensor: str | None = None
    bands: tuple[str, ...] | None = None
    wavelengths_um: tuple[float, ...]
    gsd_m: float = Field(gt=0)
    value_scale: float = 1.0
    value_offset: float = 0.0
    nodata: float | None = None
    ignore_index: int = Field(default=255, ge=0, le=255)
    label_map: dict[int, int] = Field(default_factory=dict)
    classes: tuple[ChipClass, ...]
    splits: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _wavelengths_from_sensor(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("wavelengths_um") is not None or data.get("sensor") is None:
            return data
        sensor = SENSORS.get(str(data["sensor"]))
        if sensor is None:
            raise ValueError(f"unknown sensor {data['sensor']!r}; known sensor tables: {sorted(SENSORS)}")
        if not data.get("bands"):
            raise ValueError(f"sensor {data['sensor']!r} is given without bands; list the chips' band names in order")
        wavelengths = []
        for name in data["bands"]:
            band = sensor.find_band(str(name))
            if band is None or band.wavelength_um is None:
                raise ValueError(
                    f"sensor {sensor.key!r} has no spectral band {name!r}; bands: {list(sensor.band_names)}"
                )
            wavelengths.append(band.wavelength_um)
        return {**data, "wavelengths_um": wavelengths}

    @field_validator("wavelengths_um")
    @classmethod
    def _wavelengths_in_micrometres(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value:
            raise ValueError("wavelengths_um is empty; give one centre wavelength per image band")
        for wavelength in value:
            if not 0.3 <= wavelength <= 15.0:
                raise ValueError(
                    f"wavelength {wavelength} is outside 0.3-15 µm; wavelengths_um must be in "
                    "micrometres (e.g. 0.665 for a red band, not 665 nm)"
                )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ChipSpec:
        ids = [c.id for c in self.classes]
        if sorted(ids) != list(range(len(ids))):
            raise ValueError(f"class ids must be 0..{len(ids) - 1} without gaps, got {ids}")
        if len(ids) < 2:
            raise ValueError("a chip set needs at least two classes")
        if self.ignore_index in ids:
            raise ValueError(f"ignore_index {self.ignore_index} is also a class id; pick another value")
        if self.bands is not None and len(self.bands) != len(self.wavelengths_um):
            raise ValueError(
                f"{len(self.bands)} band names but {len(self.wavelengths_um)} wavelengths; give one per band"
            )
        for stored, class_id in self.label_map.items():
            if class_id not in ids and class_id != self.ignore_index:
                raise ValueError(
                    f"label_map sends stored value {stored} to {class_id}, which is neither a class id "
                    f"({ids}) nor ignore_index ({self.ignore_index})"
                )
        return self

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class names in id order."""
        return tuple(c.name for c in sorted(self.classes, key=lambda c: c.id))

    @property
    def positive_class(self) -> int | None:
        """Id of the class named ``cloud`` for cloud chip sets, else ``None``."""
        if self.task != "cloud":
            return None
        for chip_class in self.classes:
            if chip_class.name.lower() == "cloud":
                return chip_class.id
        return max(c.id for c in self.classes)


def load_chip_spec(path: str | Path) -> ChipSpec:
    """Read and validate a ``chips.yaml``.

    Parameters
    ----------
    path
        The YAML file, or the chip folder that contains ``chips.yaml``.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If a field is missing or invalid; the message names the field.
    """
    spec_path = Path(path)
    if spec_path.is_dir():
        spec_path = spec_path / SPEC_NAME
    if not spec_path.is_file():
        raise FileNotFoundError(
            f"chip spec {spec_path} not found; a chip folder needs a {SPEC_NAME} "
            "(write one, or cut chips with `fleximo cut-chips`)"
        )

    document = yaml.safe_load(spec_path.read_text()) or {}
    try:
        return ChipSpec.model_validate(document)
    except ValidationError as error:
        raise ValueError(f"invalid chip spec {spec_path}:\n{error}") from error


def write_chip_spec(spec: ChipSpec, folder: str | Path) -> Path:
    """Write ``spec`` as ``chips.yaml`` in ``folder`` and return its path."""
    path = Path(folder) / SPEC_NAME
    document = spec.model_dump(mode="json", exclude_none=True)
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path
