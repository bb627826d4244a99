"""`vditscope report RUN`: render a run's report again from its stored files, generating nothing (after a
change to the report, or for a run written by an earlier release)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..errors import VditscopeError
from ..report import write_report
from ..report.sweep_html import write_sweep_report
from ..store import OutputDir, Run, open_run, write_atomic
from .structure import analyze_structure

RENDERABLE = ("analyze", "sweep sparsity", "sweep temperature")


def render_report(path: str | Path, overwrite: bool = False) -> Path:
    """Write ``report.html`` of the run at ``path`` again from its tables and maps; returns the report's path.
    ``overwrite``: as for every command, write beside files of yours that the run directory also holds."""
    found = open_run(path, require=())  # which command wrote it; the report itself may be missing
    needed = [spec.name for spec in found.format.always if spec.name != "report.html"]
    run = open_run(path, found.command, require=needed)
    if run.command == "analyze":
        return _render_analyze(run, overwrite)
    if run.command in RENDERABLE:
        return _render_sweep(run, overwrite)
    raise VditscopeError(
        f"{run.path} holds the output of vditscope {run.command}; vditscope report renders {', '.join(RENDERABLE)} runs"
    )


def _render_analyze(run: Run, overwrite: bool) -> Path:
    """The analyze report from run.json, stats, maps and videos, through the output policy: the run
    directory is replaced as a whole, its marker listing the new report."""
    info, stats = run.info, run.stats
    maps = run.tensors("maps.safetensors")
    videos = {name: frames.numpy() for name, frames in run.tensors("videos.safetensors").items()}
    labels = {int(index): tokens for index, tokens in (info.get("text_token_labels") or {}).items()}
    structure = analyze_structure(stats, maps, info.get("layout"), labels)
    output = OutputDir(run.path, "analyze", overwrite=overwrite)
    with output, output.staging() as staging:
        for name in run.files:
            if name != "report.html":
                _link_or_copy(run.path / name, staging / name)
        write_report(staging / "report.html", info, stats, maps, videos, structure)
    return output.path / "report.html"


def _render_sweep(run: Run, overwrite: bool) -> Path:
    """The sweep report from sweep.json, sweep.parquet and plan.json (a resumable output: written in place)."""
    meta, table = run.info, run.table("sweep.parquet")
    plan = json.loads((run.path / "plan.json").read_text()) if (run.path / "plan.json").is_file() else {}
    output = OutputDir(run.path, run.command, overwrite=overwrite, resumable=True)
    with output:
        output.open()
        write_atomic(run.path / "report.html", lambda target: write_sweep_report(target, meta, table, plan))
    return run.path / "report.html"


def _link_or_copy(source: Path, target: Path) -> None:
    """``source`` at ``target`` without copying its bytes where the file system allows (a hard link)."""
    if source.is_dir():
        shutil.copytree(source, target)
        return
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
