"""Fixtures of the stats tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread for the test: small inputs run faster and steadier on a shared machine, and
    the chunked float32 products of a kernel and of a reference round alike."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def seeded() -> Iterator[None]:
    """torch's global generator seeded with 0 for the test, and its state restored after it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield
