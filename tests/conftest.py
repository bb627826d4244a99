"""Test setup: offline, and a fixed number of torch threads.

The command line picks its threads from the machine's load unless OMP_NUM_THREADS is set; the tests
fix it at torch's default, so that runs compared with each other use the same threads.
"""

import os

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))


@pytest.fixture(scope="module")
def cluster() -> str:
    """A Ray cluster of 2 CPUs on this machine, for one test module (the Ray tests); yields its address."""
    ray = pytest.importorskip("ray")
    ray.init(
        num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20, log_to_driver=False,
        logging_level="WARNING",
    )  # fmt: skip
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
