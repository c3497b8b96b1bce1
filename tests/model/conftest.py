"""Fixtures of the model tests: the reference data and tiny seeded models."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest
import torch

from pipeline.model import MODEL_PRESETS, FlexiMo, build_model

REFERENCE_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "reference"
S2_WAVELENGTHS_UM = [0.443, 0.49, 0.56, 0.665, 0.705, 0.74, 0.783, 0.842, 0.865, 0.945, 1.61, 2.19]


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not (REFERENCE_DIR / "cases.json").is_file():
        pytest.skip(f"reference outputs not found at {REFERENCE_DIR} (needs ../shared/reference beside the project)")
    return REFERENCE_DIR


@pytest.fixture(scope="session")
def seeded_state(reference_dir: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("seeded_state", reference_dir / "seeded_state.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def reference_checkpoint(reference_dir: Path, seeded_state: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    layout = json.loads((reference_dir / "layout.json").read_text())
    path = tmp_path_factory.mktemp("reference") / "reference_tiny.pth"
    torch.save(seeded_state.build(layout), path)
    return path


@pytest.fixture(scope="session")
def tiny_classifier() -> FlexiMo:
    return build_model(MODEL_PRESETS["tiny"].replace(num_classes=5), seed=3)


@pytest.fixture(scope="session")
def tiny_upernet() -> FlexiMo:
    return build_model(MODEL_PRESETS["tiny_upernet"].replace(num_classes=4), seed=5)
