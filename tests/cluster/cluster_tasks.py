"""Task functions for tests whose scheduler or workers run in other processes.

A standalone scheduler unpickles task graphs and a worker started from a
batch script imports task functions by name. So these functions live in a
module that those processes import through ``PYTHONPATH``, not in a test module.
"""

import os

import torch
from distributed import get_worker

from cluster import torch_threads_for_worker


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


def read_worker_settings() -> dict:
    """Return the worker's thread count and the settings its environment carries."""
    worker = get_worker()
    return {
        "nthreads": worker.state.nthreads,
        "cores": os.environ.get("FLEXIMO_WORKER_CORES"),
        "omp": os.environ.get("OMP_NUM_THREADS"),
        "readdir": os.environ.get("GDAL_DISABLE_READDIR_ON_OPEN"),
        "torch_threads": torch_threads_for_worker(worker),
    }
