"""Trainer tests run with one torch thread: two threads per process oversubscribe a shared 2-core
machine (many times slower) and results do not depend on it."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
