"""`vditscope report RUN`: a run's report rendered again from its stored files, byte for byte."""

from __future__ import annotations

import base64
import re
import shutil
from pathlib import Path

import pytest

from vditscope.analyses.render import render_report

from ..in_process import run_main


def copied(run: Path, tmp_path: Path) -> Path:
    """A copy of a run that keeps each file's mtime (so the copy is still vditscope's own output)."""
    target = tmp_path / run.name
    shutil.copytree(run, target, copy_function=shutil.copy2)
    return target


@pytest.mark.parametrize("command", ["analyze", "sweep sparsity", "sinks"])
def test_report_renders_a_run_again_byte_for_byte(runs: dict[str, Path], tmp_path: Path, command: str) -> None:
    run = copied(runs[command], tmp_path)
    original = (run / "report.html").read_bytes()
    figures = sorted(p.name for p in (run / "figures").iterdir())
    (run / "report.html").unlink()  # as if an earlier release had written another report, and no figures
    shutil.rmtree(run / "figures")
    path = render_report(run)
    assert path == run / "report.html" and path.read_bytes() == original
    assert sorted(p.name for p in (run / "figures").iterdir()) == figures
    render_report(run)  # and again: the new report counts as the run's own (its marker lists it)
    assert path.read_bytes() == original


@pytest.mark.parametrize("command", ["analyze", "sweep sparsity", "sinks"])
def test_every_figure_of_a_report_is_also_a_png_and_an_svg(runs: dict[str, Path], command: str) -> None:
    """figures/ holds one PNG (the bytes the page embeds) and one SVG per matplotlib figure of the page."""
    run = runs[command]
    page = (run / "report.html").read_text()
    embedded = set(re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page))
    pngs = sorted((run / "figures").glob("*.png"))
    assert len(pngs) >= 2 and len(pngs) == len(list((run / "figures").glob("*.svg")))
    for png in pngs:
        assert base64.b64encode(png.read_bytes()).decode() in embedded, png.name
        svg = png.with_suffix(".svg").read_text()
        assert svg.lstrip().startswith("<?xml") and "<svg" in svg and svg.rstrip().endswith("</svg>")
        assert re.fullmatch(r"[a-z0-9-]+", png.stem), png.stem  # names from the page, made file-safe


def test_report_command_refuses_other_runs_in_one_line(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, err = run_main(["report", str(runs["edit"])], capsys, monkeypatch)
    assert code == 2 and "holds the output of vditscope edit; vditscope report renders analyze" in err, err
    code, err = run_main(["report", str(tmp_path)], capsys, monkeypatch)
    assert code == 2 and err.count("\n") == 1, err


def test_report_keeps_files_of_yours_in_the_run(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = copied(runs["analyze"], tmp_path)
    (run / "my-notes.txt").write_text("mine")
    original = (run / "report.html").read_bytes()
    code, err = run_main(["report", str(run)], capsys, monkeypatch)
    assert code == 2 and "also holds my-notes.txt" in err and "--overwrite" in err, err
    code, err = run_main(["report", str(run), "--overwrite"], capsys, monkeypatch)
    assert code == 0, err
    assert (run / "my-notes.txt").read_text() == "mine" and (run / "report.html").read_bytes() == original
