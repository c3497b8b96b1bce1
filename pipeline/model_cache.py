"""Per-process cache of loaded models, so a worker loads each checkpoint once.

Models are keyed by the card's content fingerprint and the device. The cache
lives in the worker process (a module global), not in the Dask graph: tasks
carry only the small card record, and the first task on a worker loads the
weights that later tasks reuse.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import torch

logger = logging.getLogger(__name__)

_MODELS: dict[tuple[str, str], torch.nn.Module] = {}
_LOCK = threading.Lock()
_LOADS: list[tuple[str, str]] = []


def _load(card: Any, device: torch.device) -> torch.nn.Module:
    """Build the model of a card on a device.

    A card that has its own ``load_model(device)`` method (a custom predictor)
    builds the model itself; any other card goes through
    :func:`pipeline.model.load_model_from_card`.
    """
    if hasattr(card, "load_model"):
        model = card.load_model(device)
    else:
        from pipeline.model import load_model_from_card

        model = load_model_from_card(card, device=device)
    return model.to(device).eval()


def model_for(card: Any, fingerprint: str, device: torch.device) -> torch.nn.Module:
    """Return the card's model on ``device``, loading it on the first call in this process.

    ``fingerprint`` is the card's content hash (:meth:`ModelCard.fingerprint`),
    computed once by the driver: hashing a checkpoint per task would cost as
    much as loading it.
    """
    key = (fingerprint, str(device))
    with _LOCK:
        model = _MODELS.get(key)
        if model is None:
            started = time.perf_counter()
            model = _load(card, device)
            _MODELS[key] = model
            _LOADS.append(key)
            logger.info(
                "loaded model %s (%s) on %s in %.2f s",
                getattr(card, "name", "?"), key[0][:12], device, time.perf_counter() - started,
            )
    return model


def load_count() -> int:
    """Return how many models this process has loaded (for tests and diagnostics)."""
    return len(_LOADS)


def clear() -> None:
    """Drop every cached model of this process."""
    with _LOCK:
        _MODELS.clear()
