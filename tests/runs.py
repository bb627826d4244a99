"""Real run directories for tests that read runs back: the command line, in this process, on the shipped tiny
model with small settings (the ``runs`` fixture in conftest.py makes one session-wide set, 20-30 s on two cores)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from vditscope.cli import main

SMALL = ["--num-frames", "9", "--steps", "2", "--height", "32", "--width", "32"]
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


def assert_renders_again(run: Path, page: str = "report.html") -> None:
    """`vditscope report` renders the run's page byte for byte, and its figures, from the stored files."""
    from vditscope.analyses.render import render_report

    original = (run / page).read_bytes()
    folder = run / "figures"  # none for a page without matplotlib figures (text-ablation: videos and a table)
    figures = sorted(p.name for p in folder.iterdir()) if folder.exists() else []
    assert figures == [] or any(name.endswith(".svg") for name in figures), figures
    (run / page).unlink()
    if folder.exists():
        shutil.rmtree(folder)
    assert render_report(run).read_bytes() == original
    assert (sorted(p.name for p in folder.iterdir()) if folder.exists() else []) == figures
