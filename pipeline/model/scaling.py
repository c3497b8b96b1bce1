"""Input scaling of model cards: reflectance (0-1) to what the weights expect.

The pipeline carries reflectance between stages. Each checkpoint was trained
on its own input space, so its card states the conversion:

- ``reflectance``: reflectance as is, optionally standardised per band.
- ``dofa-8bit``: DOFA's Sentinel-2 recipe. The true-colour bands become 8-bit
  TCI values and the other bands ``DN / 32`` clipped to 0-255 (``DN`` is
  reflectance x 10000), then each band is standardised with its mean and
  standard deviation in that space.

Statistics are matched to input bands by centre wavelength.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from typing import Annotated, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.warnings import FleximoWarning

# Two bands whose centre wavelengths differ by at most this much share
# statistics: it covers the Sentinel-2A/2B offsets and maps Gaofen's
# 0.485/0.555/0.66/0.83 µm bands onto Sentinel-2's B02/B03/B04/B08.
WAVELENGTH_MATCH_TOLERANCE_UM = 0.02

# ESA's Sentinel-2 TCI product codes reflectance 0-0.2 (DN 0-2000) onto 1-255,
# with 0 reserved for no data ("Sentinel-2 MSI User Guide: Definitions").
TCI_MAX_REFLECTANCE = 0.2
# Non-TCI bands of DOFA's Sentinel-2 pretraining data: DN / 32, clipped to 0-255.
DOFA_DN_DIVISOR = 32.0
REFLECTANCE_TO_DN = 10000.0


@dataclasses.dataclass(frozen=True)
class StoredInputTransform:
    """A card's input conversion written as one affine step per band on stored integers.

    The model input of band ``b`` is ``(stored * gain[b] - mean[b]) / std[b]``,
    computed in float32 in that order, where ``stored`` is the integer that a
    cube stores for the band's reflectance. The inference stage applies it
    while it cuts tiles from a block, instead of a pass of the card's
    ``prepare_input`` over each batch, and gets the same bits.
    """

    gain: tuple[float, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if not len(self.gain) == len(self.mean) == len(self.std):
            raise ValueError(
                f"gain, mean and std need one value per band, got {len(self.gain)}, {len(self.mean)} "
                f"and {len(self.std)}"
            )
        for name in ("gain", "mean", "std"):
            values = getattr(self, name)
            if not all(math.isfinite(value) for value in values):
                raise ValueError(f"{name} must be finite for every band, got {values}")
        if not all(value > 0 for value in self.std):
            raise ValueError(f"std must be positive for every band, got {self.std}")


class BandStats(BaseModel):
    """Mean and standard deviation of one band, in the card's input space."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    wavelength_um: float = Field(gt=0.1, lt=30.0)
    mean: float
    std: float = Field(gt=0)


class _Standardised(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    bands: list[BandStats] | None = None

    @model_validator(mode="after")
    def _unique_wavelengths(self) -> _Standardised:
        if self.bands is not None:
            waves = [band.wavelength_um for band in self.bands]
            if len(set(waves)) != len(waves):
                raise ValueError(f"input_scaling.bands lists a wavelength twice: {waves}.")
        return self

    def band_stats(self, wavelengths_um: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Return ``(mean, std)`` per input band, ``(C,)`` each, or ``None`` without statistics.

        A band with no statistics within ``WAVELENGTH_MATCH_TOLERANCE_UM``
        takes those of the nearest listed wavelength, with a FleximoWarning.
        """
        if not self.bands:
            return None
        means, stds = [], []
        for wavelength in wavelengths_um:
            nearest = min(self.bands, key=lambda band: abs(band.wavelength_um - wavelength))
            if abs(nearest.wavelength_um - wavelength) > WAVELENGTH_MATCH_TOLERANCE_UM:
                warnings.warn(
                    f"The model card has no normalisation statistics for a band at {wavelength:g} µm; using "
                    f"those of the nearest band ({nearest.wavelength_um:g} µm). Add the band to the card's "
                    "input_scaling.bands if its statistics differ.",
                    FleximoWarning,
                    stacklevel=3,
                )
            means.append(nearest.mean)
            stds.append(nearest.std)
        return torch.tensor(means), torch.tensor(stds)

    def _standardise(self, values: torch.Tensor, wavelengths_um: Sequence[float]) -> torch.Tensor:
        stats = self.band_stats(wavelengths_um)
        if stats is None:
            return values
        mean, std = (s.to(values.device, values.dtype).reshape(1, -1, 1, 1) for s in stats)
        return (values - mean) / std


class ReflectanceScaling(_Standardised):
    """Reflectance (0-1) as is, standardised per band when ``bands`` is given."""

    kind: Literal["reflectance"] = "reflectance"

    def apply(self, reflectance: torch.Tensor, wavelengths_um: Sequence[float]) -> torch.Tensor:
        """Convert reflectance ``(B, C, H, W)`` to the model's input space."""
        return self._standardise(reflectance, wavelengths_um)

    def stored_transform(self, wavelengths_um: Sequence[float], stored_scale: float) -> StoredInputTransform:
        """Return :meth:`apply` for integers that store reflectance as ``stored * stored_scale``."""
        bands = len(wavelengths_um)
        stats = self.band_stats(wavelengths_um)
        mean, std = ((0.0,) * bands, (1.0,) * bands) if stats is None else (
            tuple(stats[0].tolist()), tuple(stats[1].tolist()))
        return StoredInputTransform((stored_scale,) * bands, mean, std)


class Dofa8BitScaling(_Standardised):
    """DOFA's Sentinel-2 input space: 8-bit TCI and ``DN / 32`` bands, then per-band mean/std.

    Parameters
    ----------
    tci_wavelengths_um
        Bands converted like the TCI product (default Sentinel-2 B04, B03,
        B02): ``1 + 254 * clip(reflectance / tci_max_reflectance, 0, 1)``.
    tci_max_reflectance
        Reflectance that maps to 255 (0.2 for the ESA TCI product).
    bands
        Mean and standard deviation per band in the 0-255 space.
    """

    kind: Literal["dofa-8bit"] = "dofa-8bit"
    tci_wavelengths_um: list[float] = Field(default_factory=lambda: [0.665, 0.56, 0.49])
    tci_max_reflectance: float = Field(default=TCI_MAX_REFLECTANCE, gt=0)

    def to_8bit(self, reflectance: torch.Tensor, wavelengths_um: Sequence[float]) -> torch.Tensor:
        """Convert reflectance ``(B, C, H, W)`` to the 0-255 space, before standardisation.

        NOTE: values are not rounded to integers as in the stored 8-bit
        products; the difference is below one count.
        """
        is_tci = torch.tensor(
            [
                any(abs(w - t) <= WAVELENGTH_MATCH_TOLERANCE_UM for t in self.tci_wavelengths_um)
                for w in wavelengths_um
            ],
            device=reflectance.device,
        ).reshape(1, -1, 1, 1)
        tci = 1.0 + 254.0 * (reflectance / self.tci_max_reflectance).clamp(0.0, 1.0)
        other = (reflectance * (REFLECTANCE_TO_DN / DOFA_DN_DIVISOR)).clamp(0.0, 255.0)
        return torch.where(is_tci, tci, other)

    def apply(self, reflectance: torch.Tensor, wavelengths_um: Sequence[float]) -> torch.Tensor:
        """Convert reflectance ``(B, C, H, W)`` to the model's input space."""
        return self._standardise(self.to_8bit(reflectance, wavelengths_um), wavelengths_um)

    def stored_transform(self, wavelengths_um: Sequence[float], stored_scale: float) -> None:
        """Return ``None``: the clipping and the TCI curve are not one affine step."""
        return None


InputScaling = Annotated[ReflectanceScaling | Dofa8BitScaling, Field(discriminator="kind")]
