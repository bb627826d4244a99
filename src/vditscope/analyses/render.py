"""`vditscope report RUN`: render a run's report again from its stored files, generating nothing (after a
change to the report, or for a run written by an earlier release)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from ..errors import VditscopeError
from ..report import write_report
from ..report.figure_files import FIGURES_DIR, figure_files
from ..report.figures import comparison_bars, edit_sweep_bars
from ..report.sweep_html import write_sweep_report
from ..store import OutputDir, Run, open_run, write_atomic
from .results import SinkResult
from .structure import analyze_structure


def render_report(path: str | Path, overwrite: bool = False) -> Path:
    """Write the report page of the run at ``path`` again from its tables and maps; returns the page's path.
    ``overwrite``: as for every command, write beside files of yours that the run directory also holds."""
    found = open_run(path, require=())  # which command wrote it; the report itself may be missing
    needed = [spec.name for spec in found.format.always if spec.kind != "html"]  # the page may be missing
    run = open_run(path, found.command, require=needed)
    writer = WRITERS.get(run.command)
    if writer is None:
        raise VditscopeError(
            f"{run.path} holds the output of vditscope {run.command}; vditscope report renders "
            f"{', '.join(RENDERABLE)} runs"
        )
    info = run.format.info
    if info is not None and info not in run.files:
        raise VditscopeError(
            f"{run.path} was written by an earlier release without {info}; rerun `vditscope {run.command}` to "
            "get a run that `vditscope report` can render"
        )
    page = next(spec.name for spec in run.format.files if spec.kind == "html")
    render = _render_in_place if run.format.resumable else _render_staged
    return render(run, overwrite, page, writer(run))


def _analyze_writer(run: Run) -> Callable[[Path], None]:
    """The analyze report from run.json, stats, maps and videos."""
    info, stats = run.info, run.stats
    maps = run.tensors("maps.safetensors")
    videos = {name: frames.numpy() for name, frames in run.tensors("videos.safetensors").items()}
    labels = {int(index): tokens for index, tokens in (info.get("text_token_labels") or {}).items()}
    structure = analyze_structure(stats, maps, info.get("layout"), labels)
    return lambda path: write_report(path, info, stats, maps, videos, structure)


def _sweep_writer(run: Run) -> Callable[[Path], None]:
    """The sweep report from sweep.json, sweep.parquet and plan.json."""
    meta, table = run.info, run.table("sweep.parquet")
    plan = json.loads((run.path / "plan.json").read_text()) if (run.path / "plan.json").is_file() else {}
    return lambda path: write_sweep_report(path, meta, table, plan)


def _sinks_writer(run: Run) -> Callable[[Path], None]:
    """The sinks report from run.json and the sink tables (the language model's beside them with --lm)."""
    from ..report.sinks_html import write_sinks_report

    info = run.info
    primary = _sink_result(run, "", info["kind"], info)
    lm = _sink_result(run, "lm_", "text", info["lm"]) if info.get("lm") else None
    calls = run.table("sink_calls.parquet") if "sink_calls.parquet" in run.files else None
    return lambda path: write_sinks_report(path, info, primary, lm, calls)


def _retrain_study_writer(run: Run) -> Callable[[Path], None]:
    """study.html of a retrain run from study.json, its tables and videos."""
    from ..report.retrain_html import write_study_report

    if "study.json" not in run.files:
        raise VditscopeError(f"{run.path} holds no study (study.json): rerun `vditscope retrain` without --no-study")
    study = run.json("study.json")
    tables = {name: run.table(f"study_{name}.parquet") for name in ("sinks", "sparsity", "quality")}
    videos: dict = {}
    if "study_videos.safetensors" in run.files:
        videos = {name: t.numpy() for name, t in run.tensors("study_videos.safetensors").items()}
        videos["prompt"] = str(study.get("video_prompt") or "")
    loss = run.path / "loss.png"
    return lambda path: write_study_report(path, study["models"], study["layers"], tables, videos, loss)


def _compare_writer(run: Run) -> Callable[[Path], None]:
    from ..report.compare_html import write_compare_report
    from .results import Comparison, RunData

    info, table = run.info, run.table()
    runs = [RunData(Path(info[key]["path"]), dict(info[key]), {}) for key in ("run_a", "run_b")]
    comparison = Comparison(table, runs[0], runs[1], list(info.get("notes", [])))

    def write(path: Path) -> None:
        with figure_files(path.parent):  # drawn again, so that figures/ gets the SVG as well
            figure = comparison_bars(table, runs[0].path.name, runs[1].path.name)
            write_compare_report(path, comparison, figure)

    return write


def _edit_sweep_writer(run: Run) -> Callable[[Path], None]:
    from ..report.study_html import write_edit_sweep_report

    info, table = run.info, run.table()
    steps = tuple(info["steps"]) if info.get("steps") else None

    def write(path: Path) -> None:
        with figure_files(path.parent):  # drawn again, so that figures/ gets the SVG as well
            figure = edit_sweep_bars(table)
            write_edit_sweep_report(path, info["source_prompt"], info["target_prompt"], info["mode"],
                                    int(info["window"]), steps, table, figure)  # fmt: skip

    return write


def _text_ablation_writer(run: Run) -> Callable[[Path], None]:
    from ..report.study_html import write_text_ablation_report

    info, table = run.info, run.table()
    videos = {name: frames.numpy() for name, frames in run.tensors("frames.safetensors").items()}

    def write(path: Path) -> None:
        write_text_ablation_report(path, info["model"], info["family"], int(info["seed"]), info["prompts"],
                                   info["methods"], table, videos)  # fmt: skip

    return write


def _sink_result(run: Run, prefix: str, kind: str, info: dict) -> SinkResult:
    """One model's sink tables as the sinks command left them (``prefix`` "lm_" for the language model)."""

    def table(name: str) -> pd.DataFrame:
        return run.table(f"{prefix}{name}.parquet") if f"{prefix}{name}.parquet" in run.files else pd.DataFrame()

    parts = [table(name) for name in ("sinks", "sink_layers", "sink_where", "sink_consistency", "sink_ablation")]
    return SinkResult(kind, str(info.get("model", "")), str(info.get("family", "")), *parts)


# command -> the writer of its report page, built from the run's stored files
WRITERS: dict[str, Callable[[Run], Callable[[Path], None]]] = {
    "analyze": _analyze_writer,
    "sweep sparsity": _sweep_writer,
    "sweep temperature": _sweep_writer,
    "sinks": _sinks_writer,
    "edit-sweep": _edit_sweep_writer,
    "text-ablation": _text_ablation_writer,
    "compare": _compare_writer,
    "retrain": _retrain_study_writer,
}
RENDERABLE = tuple(WRITERS)


def _render_staged(run: Run, overwrite: bool, page: str, write: Callable[[Path], None]) -> Path:
    """Write a run's ``page`` with ``write(path)`` through the output policy: the run directory is replaced
    as a whole (its files linked, the page and its figures new), its marker listing the new page."""
    output = OutputDir(run.path, run.command, overwrite=overwrite)
    with output, output.staging() as staging:
        for name in run.files:
            if name not in (page, FIGURES_DIR):
                _link_or_copy(run.path / name, staging / name)
        write(staging / page)
    return output.path / page


def _render_in_place(run: Run, overwrite: bool, page: str, write: Callable[[Path], None]) -> Path:
    """Write the ``page`` of a resumable output (sweeps, retrain) in place, atomically, as the command does."""
    output = OutputDir(run.path, run.command, overwrite=overwrite, resumable=True)
    with output:
        output.open()
        write_atomic(run.path / page, write)
    return run.path / page


def _link_or_copy(source: Path, target: Path) -> None:
    """``source`` at ``target`` without copying its bytes where the file system allows (a hard link)."""
    if source.is_dir():
        shutil.copytree(source, target)
        return
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
