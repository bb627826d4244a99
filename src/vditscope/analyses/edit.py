"""`vditscope edit` and `vditscope edit-sweep`: editing by self-attention transfer.

The source and the target prompt run in lockstep as one batch from the same initial noise (one
seeded generator per element); in the chosen layers and steps the target takes the source's
video self-attention (``capture/transfer.py``). A second lockstep run without transfer gives the
plain target. Layout is scored by SSIM/PSNR of the frames and, for the shapes models, by how far
the shape's track is from the source's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..capture.transfer import TRANSFER_MODES, TransferConfig, transfer
from ..data import shapes
from ..errors import VditscopeError
from ..media import gif_bytes, write_mp4
from ..store import OutputDir, json_safe, write_tensors
from . import quality
from .loaded import LoadedPipeline, model_directory
from .options import GenerationOptions, checked_layers, checked_seed

ProgressFn = Callable[[str, int, int], None]
EDIT_FILES = ("source.mp4", "target.mp4", "edited.mp4", "preview.gif", "frames.safetensors", "metrics.json")
EDIT_SWEEP_FILES = ("edit_sweep.parquet", "edit_sweep.csv", "edit_sweep.png", "report.html")


@dataclass
class EditRequest(GenerationOptions):
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
class EditSession:
    """A loaded pipeline with the settings of one edit request."""

    pipe: Any
    num_layers: int
    generation: dict[str, Any]
    device: str
    background: str | None
    model: str


def claim_output(request: EditRequest, command: str, files: Sequence[str]) -> OutputDir:
    """The output claim of an edit command (checked before the model loads)."""

    model_dir = model_directory(request)
    return OutputDir(request.out, command, files=files, inputs=[model_dir], overwrite=request.overwrite)


def open_session(request: EditRequest) -> EditSession:
    """Check the request, load the model, resolve the generation settings (clear errors, nothing written)."""
    if not request.source_prompt.strip() or not request.target_prompt.strip():
        raise VditscopeError("empty prompt: --source-prompt and --target-prompt need text")
    if request.mode not in TRANSFER_MODES:
        raise VditscopeError(f"unknown transfer mode {request.mode}; choose {' or '.join(TRANSFER_MODES)}")
    if request.window < 1:
        raise VditscopeError(f"--window must be positive, got {request.window}")
    loaded = LoadedPipeline.load(request)
    generation = loaded.generation(request)
    num_layers = loaded.self_layers
    checked_layers(request.layers, num_layers)
    total = int(generation.get("num_inference_steps", 0)) or None
    if request.steps is not None and total is not None and request.steps[1] > total:
        raise VditscopeError(f"step range {request.steps[0]}:{request.steps[1]} is outside the {total}-step schedule")
    background = shapes.prompt_background(request.source_prompt, loaded.settings)
    return EditSession(loaded.pipe, num_layers, generation, loaded.device, background, str(loaded.model_dir))


def lockstep(
    session: EditSession, request: EditRequest, config: TransferConfig | None
) -> tuple[np.ndarray, np.ndarray]:
    """(source frames, target frames) of one lockstep run, with the transfer when ``config`` is given."""
    generators = [torch.Generator(device=session.device).manual_seed(int(request.seed)) for _ in range(2)]

    def run() -> Any:
        return session.pipe(
            prompt=[request.source_prompt, request.target_prompt],
            generator=generators,
            output_type="np",
            **session.generation,
        )

    if config is None:
        result = run()
    else:
        with transfer(session.pipe, config):
            result = run()
    frames = np.asarray(result.frames, dtype=np.float32)
    return frames[0], frames[1]


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
    """Source, plain target and edited videos; writes mp4s, preview.gif, frames.safetensors, metrics.json."""
    checked_seed(request.seed)
    with claim_output(request, "edit", EDIT_FILES) as output:
        return output.path, _edit(request, output)


def _edit(request: EditRequest, output: OutputDir) -> dict[str, Any]:
    session = open_session(request)
    config = TransferConfig(
        layers=frozenset(request.layers) if request.layers is not None else None, steps=request.steps, mode=request.mode
    )
    source, target = lockstep(session, request, None)
    _, edited = lockstep(session, request, config)
    metrics: dict[str, Any] = {
        "source_prompt": request.source_prompt,
        "target_prompt": request.target_prompt,
        "seed": request.seed,
        "model": session.model,
        "mode": request.mode,
        "layers": sorted(config.layers) if config.layers is not None else "all",
        "steps": list(config.steps) if config.steps is not None else "all",
        "edited_vs_source": {"ssim": quality.ssim(edited, source), "psnr": quality.psnr(edited, source)},
        "edited_vs_target": {"ssim": quality.ssim(edited, target), "psnr": quality.psnr(edited, target)},
        "target_vs_source": {"ssim": quality.ssim(target, source), "psnr": quality.psnr(target, source)},
    }
    if session.background is not None:
        measured = {name: shapes.measure_clip(video, session.background) for name, video in
                    (("source", source), ("target", target), ("edited", edited))}  # fmt: skip
        metrics["colour"] = {name: m.color for name, m in measured.items()}
        metrics["track_distance_px"] = {
            "edited_vs_source": layout_scores(edited, source, session.background)["track_distance_px"],
            "target_vs_source": layout_scores(target, source, session.background)["track_distance_px"],
        }
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
    source's layout each keeps. Writes edit_sweep.parquet/.csv, a figure and report.html."""
    checked_seed(request.seed)
    with claim_output(request, "edit-sweep", EDIT_SWEEP_FILES) as output:
        return output.path, _edit_sweep(request, output, progress)


def _edit_sweep(request: EditRequest, output: OutputDir, progress: ProgressFn | None) -> Any:
    import pandas as pd

    from ..report.figures import edit_sweep_bars
    from ..report.study_html import write_edit_sweep_report

    session = open_session(request)
    candidates = sorted(request.layers) if request.layers is not None else list(range(session.num_layers))
    windows = [candidates[i : i + request.window] for i in range(0, len(candidates) - request.window + 1)]
    source, target = lockstep(session, request, None)
    rows = [{"layers": "none", "first_layer": -1, **layout_scores(target, source, session.background)}]
    for index, window in enumerate(windows):
        if progress:
            progress(f"layers {window[0]}-{window[-1]}", index, len(windows))
        config = TransferConfig(layers=frozenset(window), steps=request.steps, mode=request.mode)
        _, edited = lockstep(session, request, config)
        label = ",".join(map(str, window))
        rows.append({"layers": label, "first_layer": window[0], **layout_scores(edited, source, session.background)})
    if progress:
        progress("writing", len(windows), len(windows))
    table = pd.DataFrame(rows)
    figure = edit_sweep_bars(table)
    with output.staging() as staging:
        table.to_parquet(staging / "edit_sweep.parquet", index=False)
        table.to_csv(staging / "edit_sweep.csv", index=False)
        (staging / "edit_sweep.png").write_bytes(figure)
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
