"""A fixture that runs a test module's tiny models on one torch thread."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():  # type: ignore[no-untyped-def]
    """Run the tiny models on one thread: on a shared CI machine, spinning OpenMP threads cost more than they give."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
