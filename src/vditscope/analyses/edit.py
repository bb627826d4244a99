"""`vditscope edit` and `vditscope edit-sweep`: editing by self-attention transfer.

The source and the target prompt run in lockstep as one batch from the same initial noise (one
seeded generator per element); in the chosen layers and steps the target takes the source's
video self-attention (``capture/transfer.py``). A second lockstep run without transfer gives the
plain target. Layout is scored by SSIM/PSNR of the frames and, for the shapes models, by how far
the shape's track is from the source's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..adapters.loaded import model_directory
from ..adapters.settings import model_settings
from ..capture.transfer import TRANSFER_MODES, TransferConfig, transfer
from ..data import shapes
from ..errors import VditscopeError
from ..executors import (
    Executor,
    Job,
    JobPlan,
    ModelSpec,
    Pool,
    Workbench,
    checked_model_dir,
    executor_for,
    run_jobs,
)
from ..media import gif_bytes, write_mp4
from ..progress import ProgressFn
from ..store import OutputDir, files_of, json_safe, write_json, write_tensors
from ..tiny import DEFAULT_MODEL
from . import quality
from .memory_plan import check_generation
from .options import ExecutorOptions, checked_layers, checked_seed

EDIT_FILES = files_of("edit")
EDIT_SWEEP_FILES = files_of("edit-sweep")


@dataclass
class EditRequest(ExecutorOptions):
    """Source and target prompts, where and how to transfer; None fields take the model's defaults."""

    source_prompt: str = ""
    target_prompt: str = ""
    seed: int = 0
    layers: Sequence[int] | None = None
    steps: tuple[int, int] | None = None
    mode: str = "kv"
    out: Path = Path("runs/edit")
    window: int = 1  # edit-sweep: layers transferred together


@dataclass
class EditSetup:
    """An edit request resolved before anything loads: the model, its generation settings, the background."""

    model: str
    model_dir: Path
    generation: dict[str, Any]
    background: str | None

    @property
    def total_steps(self) -> int | None:
        """Denoising steps of the schedule (None when the settings do not say)."""
        return int(self.generation.get("num_inference_steps", 0)) or None


def claim_output(request: EditRequest, command: str, files: Sequence[str]) -> OutputDir:
    """The output claim of an edit command (checked before the model loads)."""

    model_dir = model_directory(request.model)
    return OutputDir(request.out, command, files=files, inputs=[model_dir], overwrite=request.overwrite)


def edit_setup(request: EditRequest) -> EditSetup:
    """Check the request against the model's files and settings (clear errors, nothing loaded or written)."""
    if not request.source_prompt.strip() or not request.target_prompt.strip():
        raise VditscopeError("empty prompt: --source-prompt and --target-prompt need text")
    if request.mode not in TRANSFER_MODES:
        raise VditscopeError(f"unknown transfer mode {request.mode}; choose {' or '.join(TRANSFER_MODES)}")
    if request.window < 1:
        raise VditscopeError(f"--window must be positive, got {request.window}")
    model = request.model or DEFAULT_MODEL
    model_dir = checked_model_dir(model)
    settings = model_settings(model_dir)
    background = shapes.prompt_background(request.source_prompt, settings)
    setup = EditSetup(model, model_dir, request.generation_kwargs(settings), background)
    total = setup.total_steps
    if request.steps is not None and total is not None and request.steps[1] > total:
        raise VditscopeError(f"step range {request.steps[0]}:{request.steps[1]} is outside the {total}-step schedule")
    return setup


def start_pool(request: EditRequest, setup: EditSetup, executor: Executor) -> Pool:
    """Workers with the model loaded; the layer set is checked against it before any job runs."""
    # source, plain target and edited videos
    check_generation(setup.model_dir, setup.generation, request.device, request.dtype, videos=3,
                     executor=executor.name, offload=request.offload)  # fmt: skip
    pool = executor.start(ModelSpec.of(setup.model, request))
    try:
        checked_layers(request.layers, pool.facts.self_layers)
    except BaseException:
        pool.close()
        raise
    return pool


@dataclass(frozen=True)
class Lockstep:
    """One lockstep run of the source and target prompts (same noise), with the transfer when ``config``
    is given: a job returning (source frames, target frames)."""

    source_prompt: str
    target_prompt: str
    seed: int
    generation: dict[str, Any]
    config: TransferConfig | None = None

    def __call__(self, bench: Workbench) -> tuple[np.ndarray, np.ndarray]:
        generators = [torch.Generator(device=bench.device).manual_seed(int(self.seed)) for _ in range(2)]

        def run() -> Any:
            return bench.pipe(
                prompt=[self.source_prompt, self.target_prompt],
                generator=generators,
                output_type="np",
                **self.generation,
            )

        if self.config is None:
            result = run()
        else:
            with transfer(bench.pipe, self.config):
                result = run()
        frames = np.asarray(result.frames, dtype=np.float32)
        return frames[0], frames[1]


@dataclass(frozen=True)
class WindowScores:
    """An edit-sweep row: the layout scores of the edited video of ``lockstep`` (or, without one, of the
    plain target) against the plain source, the job's one input."""

    layers: str
    first_layer: int
    background: str | None
    lockstep: Lockstep | None = None

    def __call__(self, bench: Workbench, plain: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
        source, target = plain
        video = target if self.lockstep is None else self.lockstep(bench)[1]
        return {"layers": self.layers, "first_layer": self.first_layer, **layout_scores(video, source, self.background)}


def lockstep_of(request: EditRequest, setup: EditSetup, config: TransferConfig | None) -> Lockstep:
    """The lockstep job of a request, with the transfer ``config`` (None: the plain source and target)."""
    return Lockstep(request.source_prompt, request.target_prompt, int(request.seed), setup.generation, config)


def track(frames: np.ndarray, background: str | None) -> np.ndarray | None:
    """Per-frame centroid (y, x) of the shape in pixels, for shapes-model videos (else None)."""
    if background is None:
        return None
    return shapes.shape_track(frames, background)


def layout_scores(edited: np.ndarray, source: np.ndarray, background: str | None) -> dict[str, float]:
    """How much of the source's layout a video keeps: SSIM, PSNR and (shapes models) track distance."""
    scores = {"ssim_to_source": quality.ssim(edited, source), "psnr_to_source": quality.psnr(edited, source)}
    a, b = track(edited, background), track(source, background)
    if a is not None and b is not None:
        scores["track_distance_px"] = float(np.linalg.norm(a - b, axis=-1).mean())
    return scores


def run_edit(request: EditRequest) -> tuple[Path, dict[str, Any]]:
    """Source, plain target and edited videos; writes mp4s, preview.gif, frames.safetensors, metrics.json.
    The two lockstep runs (plain, with the transfer) are jobs on ``request.executor``."""
    checked_seed(request.seed)
    executor = executor_for(request.executor, request.address)
    with claim_output(request, "edit", EDIT_FILES) as output:
        return output.path, _edit(request, output, executor)


# edit's default: transfer in the first 80% of the denoising steps (as Prompt-to-Prompt injects), the last ones
# left to the target's own attention; on tiny-cogvideox-motion, transferring all 20 keeps the source's colour
EDIT_STEP_SHARE = 0.8


def transfer_steps(requested: tuple[int, int] | None, total: int | None) -> tuple[int, int] | None:
    """The steps edit transfers in: those asked for, else the first ``EDIT_STEP_SHARE`` of a ``total``-step
    schedule (all of them when the schedule's length is unknown, None)."""
    if requested is not None or total is None:
        return requested
    return 0, max(1, round(EDIT_STEP_SHARE * total))


def _edit(request: EditRequest, output: OutputDir, executor: Executor) -> dict[str, Any]:
    setup = edit_setup(request)
    config = TransferConfig(
        layers=frozenset(request.layers) if request.layers is not None else None,
        steps=transfer_steps(request.steps, setup.total_steps),
        mode=request.mode,
    )
    jobs = [Job("plain", lockstep_of(request, setup, None)), Job("edited", lockstep_of(request, setup, config))]
    with start_pool(request, setup, executor) as pool:
        (source, target), (_, edited) = run_jobs(pool, JobPlan(jobs, noun="generations")).results
    metrics: dict[str, Any] = {
        "source_prompt": request.source_prompt,
        "target_prompt": request.target_prompt,
        "seed": request.seed,
        "model": str(setup.model_dir),
        "mode": request.mode,
        "layers": sorted(config.layers) if config.layers is not None else "all",
        "steps": list(config.steps) if config.steps is not None else "all",
        "edited_vs_source": {"ssim": quality.ssim(edited, source), "psnr": quality.psnr(edited, source)},
        "edited_vs_target": {"ssim": quality.ssim(edited, target), "psnr": quality.psnr(edited, target)},
        "target_vs_source": {"ssim": quality.ssim(target, source), "psnr": quality.psnr(target, source)},
    }
    if setup.background is not None:
        measured = {name: shapes.measure_clip(video, setup.background) for name, video in
                    (("source", source), ("target", target), ("edited", edited))}  # fmt: skip
        metrics["colour"] = {name: m.color for name, m in measured.items()}
        metrics["track_distance_px"] = {
            "edited_vs_source": layout_scores(edited, source, setup.background)["track_distance_px"],
            "target_vs_source": layout_scores(target, source, setup.background)["track_distance_px"],
        }
    metrics["executor"] = executor.name
    videos = {"source": source, "target": target, "edited": edited}
    with output.staging() as staging:
        write_tensors(staging / "frames.safetensors", {k: torch.from_numpy(v) for k, v in videos.items()})
        for name, video in videos.items():
            write_mp4(staging / f"{name}.mp4", video)
        (staging / "preview.gif").write_bytes(gif_bytes(np.concatenate(list(videos.values()), axis=2)))
        (staging / "metrics.json").write_text(json.dumps(json_safe(metrics), indent=1) + "\n")
    return metrics


def run_edit_sweep(request: EditRequest, progress: ProgressFn | None = None) -> tuple[Path, Any]:
    """Transfer one window of ``request.window`` consecutive layers at a time; score how much of the
    source's layout each keeps. Writes edit_sweep.parquet/.csv, a figure and report.html.

    Each window is a job on ``request.executor``; the plain lockstep run is computed once and shared."""
    checked_seed(request.seed)
    executor = executor_for(request.executor, request.address)
    with claim_output(request, "edit-sweep", EDIT_SWEEP_FILES) as output:
        return output.path, _edit_sweep(request, output, executor, progress)


def edit_sweep_plan(request: EditRequest, setup: EditSetup, num_layers: int) -> JobPlan:
    """One job per row: the plain target, then each window, all scored against the shared plain lockstep run."""
    candidates = sorted(request.layers) if request.layers is not None else list(range(num_layers))
    windows = [candidates[i : i + request.window] for i in range(0, len(candidates) - request.window + 1)]
    plain = "plain"
    jobs = [Job("none", WindowScores("none", -1, setup.background), needs=(plain,), label="plain target")]
    for window in windows:
        config = TransferConfig(layers=frozenset(window), steps=request.steps, mode=request.mode)
        label = ",".join(map(str, window))
        task = WindowScores(label, window[0], setup.background, lockstep_of(request, setup, config))
        jobs.append(Job(f"layers {label}", task, needs=(plain,), label=f"layers {window[0]}-{window[-1]}"))
    return JobPlan(jobs, inputs={plain: Job(plain, lockstep_of(request, setup, None))}, noun="transfers")


def _edit_sweep(request: EditRequest, output: OutputDir, executor: Executor, progress: ProgressFn | None) -> Any:
    import pandas as pd

    from ..report.figure_files import figure_files
    from ..report.figures import edit_sweep_bars
    from ..report.study_html import write_edit_sweep_report

    setup = edit_setup(request)
    with start_pool(request, setup, executor) as pool:
        plan = edit_sweep_plan(request, setup, pool.facts.self_layers)
        rows = run_jobs(pool, plan, progress).results
    if progress:
        progress("writing", len(rows) - 1, len(rows) - 1)
    table = pd.DataFrame(rows)
    with output.staging() as staging, figure_files(staging):
        figure = edit_sweep_bars(table)
        table.to_parquet(staging / "edit_sweep.parquet", index=False)
        table.to_csv(staging / "edit_sweep.csv", index=False)
        (staging / "edit_sweep.png").write_bytes(figure)
        info = {"model": str(setup.model_dir), "source_prompt": request.source_prompt,
                "target_prompt": request.target_prompt, "seed": request.seed, "mode": request.mode,
                "window": request.window, "steps": None if request.steps is None else list(request.steps)}  # fmt: skip
        write_json(staging / "run.json", info)
        write_edit_sweep_report(
            staging / "report.html",
            request.source_prompt,
            request.target_prompt,
            request.mode,
            request.window,
            request.steps,
            table,
            figure,
        )
    return table
