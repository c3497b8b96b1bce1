"""Task functions for the address-profile tests.

A standalone scheduler unpickles task graphs, so these functions live in a
module that the test's scheduler and worker processes import through
``PYTHONPATH`` rather than in the test module itself.
"""

import os

import torch
from distributed import get_worker


def read_variable(name: str) -> str | None:
    """Read an environment variable in the process that runs this function."""
    return os.environ.get(name)


def run_small_model(seed: int) -> tuple[str, list[int]]:
    """Run a small convolutional model on a seeded tensor; return the worker and the output shape."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 1))
    with torch.no_grad():
        logits = model(torch.rand(2, 4, 32, 32))
    return get_worker().address, list(logits.shape)
