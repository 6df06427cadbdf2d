"""Integration tests run single-threaded: tiny models gain nothing from intra-op threads, and on a busy 2-core machine
OpenMP's spinning threads make them up to 50x slower. Subprocesses get OMP_NUM_THREADS=1 for the same reason."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
