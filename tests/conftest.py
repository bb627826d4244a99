"""Test setup: offline, and a fixed number of torch threads.

The command line picks its threads from the machine's load unless OMP_NUM_THREADS is set; the tests
fix it at torch's default, so that runs compared with each other use the same threads.
"""

import os
from pathlib import Path

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))


def require_triton() -> None:
    """Skip without the triton package, unless VDITSCOPE_REQUIRE_TRITON=1 (set by .ci/run): then its
    absence fails the test, so the kernel tests cannot be skipped silently in CI."""
    if os.environ.get("VDITSCOPE_REQUIRE_TRITON") == "1":
        import triton  # noqa: F401
    else:
        pytest.importorskip("triton")


@pytest.fixture
def triton_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Triton's interpreter for the test: kernels run on CPU tensors (TRITON_INTERPRET is read per call)."""
    require_triton()
    monkeypatch.setenv("TRITON_INTERPRET", "1")


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


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """command -> a finished run directory of it (the analyze run's folder name and prompt hold markup)."""
    from .runs import HOSTILE, PROMPT, SMALL, run_command  # here: after the environment above is set

    root = tmp_path_factory.mktemp("runs")
    out = {
        "analyze": root / "run<i>&amp;",
        "edit": root / "edit",
        "sinks": root / "sinks",
        "sweep sparsity": root / "sweep",
    }
    run_command(["analyze", "--out", str(out["analyze"]), "--prompt", HOSTILE, "--seed", "0",
                 "--map-tiles", "16", "--layers", "0,1", *SMALL])  # fmt: skip
    run_command(["edit", "--source-prompt", PROMPT, "--target-prompt", PROMPT.replace("red", "blue"),
                 "--out", str(out["edit"]), *SMALL])  # fmt: skip
    run_command(["sinks", "--prompt", PROMPT, "--out", str(out["sinks"]), *SMALL])
    run_command(["sweep", "sparsity", "--per-layer", "--k", "0.5", "--layers", "0", "--prompt", PROMPT,
                 "--seed", "0", "--out", str(out["sweep sparsity"]), *SMALL])  # fmt: skip
    return out
