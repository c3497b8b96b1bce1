"""The encoder reproduces the reference FlexiMo outputs within 1e-4 (CPU, float32)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.model import load_model

TOLERANCE = 1e-4


def _cases(reference_dir: Path) -> dict[str, dict]:
    return json.loads((reference_dir / "cases.json").read_text())["cases"]


def _case_names() -> list[str]:
    path = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "cases.json"
    return sorted(json.loads(path.read_text())["cases"]) if path.is_file() else ["reference-missing"]


@pytest.mark.parametrize("case_name", _case_names())
def test_reference_case_matches(case_name: str, reference_dir: Path, reference_checkpoint: Path) -> None:
    case = _cases(reference_dir)[case_name]
    expected = np.load(reference_dir / "expected.npz")
    model = load_model(reference_checkpoint, num_heads=4)

    generator = torch.Generator().manual_seed(case["input_seed"])
    x = torch.randn((2, len(case["wavelengths"]), case["size"], case["size"]), generator=generator)
    checksum_sum, first, last = case["input_checksum_sum_first_last"]
    assert x.flatten()[0].item() == pytest.approx(first, abs=1e-6)
    assert x.flatten()[-1].item() == pytest.approx(last, abs=1e-6)
    assert x.sum().item() == pytest.approx(checksum_sum, rel=1e-5, abs=1e-3)

    with torch.no_grad():
        features = model.forward_features(x, wavelengths_um=case["wavelengths"], patch_size=case["patch_size"])
        logits = model(x, wavelengths_um=case["wavelengths"], patch_size=case["patch_size"])

    assert features.shape == expected[f"{case_name}__features"].shape
    assert logits.shape == expected[f"{case_name}__logits"].shape
    np.testing.assert_allclose(features.numpy(), expected[f"{case_name}__features"], rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(logits.numpy(), expected[f"{case_name}__logits"], rtol=0, atol=TOLERANCE)


def test_reference_cases_in_one_model(reference_dir: Path, reference_checkpoint: Path) -> None:
    # The reference re-created its model per case; one model must give the
    # same numbers for all cases in any order, because forward keeps no state.
    expected = np.load(reference_dir / "expected.npz")
    model = load_model(reference_checkpoint, num_heads=4)
    cases = _cases(reference_dir)
    for case_name in [*sorted(cases), *sorted(cases, reverse=True)]:
        case = cases[case_name]
        generator = torch.Generator().manual_seed(case["input_seed"])
        x = torch.randn((2, len(case["wavelengths"]), case["size"], case["size"]), generator=generator)
        with torch.no_grad():
            logits = model(x, wavelengths_um=case["wavelengths"], patch_size=case["patch_size"])
        np.testing.assert_allclose(logits.numpy(), expected[f"{case_name}__logits"], rtol=0, atol=TOLERANCE)
