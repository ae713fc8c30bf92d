"""Shared test set-up."""

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    # On a shared 2-core machine, two OpenMP threads that lose a core to another process spin and make
    # tiny ops ~50x slower; one thread keeps the in-process tests fast and their timings stable.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
