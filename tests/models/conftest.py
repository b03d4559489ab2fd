"""Shared setup for the models/ tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """These tests use small tensors: one intra-op thread is as fast, and it keeps them fast
    when other work shares the CPU (two busy thread pools on two cores slow each other ~5x)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
