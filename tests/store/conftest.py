"""Real run directories for the store tests: the command line, in this process, on the shipped tiny model
with small settings (one session-wide set, about 20-30 s on two cores)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from vditscope.cli import main

SMALL = ["--num-frames", "9", "--steps", "2", "--height", "32", "--width", "64"]
PROMPT = "a red square moving left on a black background"
HOSTILE = "<script>alert(1)</script> a red square"  # a prompt that must show as text in HTML


def run_command(argv: list[str]) -> None:
    """``vditscope ARGV`` in this process; fails the test on a non-zero exit."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["vditscope", *argv])
        try:
            main()
        except SystemExit as exc:
            assert not exc.code, f"vditscope {' '.join(argv)} exited with {exc.code}"


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """command -> a finished run directory of it (the analyze run's folder name and prompt hold markup)."""
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
