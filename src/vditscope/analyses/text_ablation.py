"""`vditscope text-ablation`: how much of a generation the first text token alone decides.

Each prompt is generated in full and with only its first text token reaching the video (masked
out of attention, or the embedding truncated); the ablated video is scored against the full one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..adapters.loaded import model_directory
from ..adapters.settings import default_prompts, model_settings
from ..capture.text_ablation import ABLATIONS, first_text_token_only
from ..data import shapes
from ..errors import VditscopeError
from ..executors import Job, JobPlan, ModelSpec, Workbench, checked_model_dir, executor_for, run_jobs
from ..progress import ProgressFn
from ..store import files_of
from . import quality
from .memory_plan import check_generation
from .options import ExecutorOptions, checked_prompts_and_seeds

TEXT_ABLATION_FILES = files_of("text-ablation")


@dataclass
class TextAblationRequest(ExecutorOptions):
    """Prompts, seed and ablation methods; None fields take the model's defaults."""

    prompts: Sequence[str] = ()
    seed: int = 0
    methods: Sequence[str] = ABLATIONS
    out: Path = Path("runs/text-ablation")


@dataclass(frozen=True)
class AblationJob:
    """One generation of a prompt: in full (``method`` None) or with only its first text token."""

    prompt: str
    seed: int
    generation: dict[str, Any]
    method: str | None = None

    def __call__(self, bench: Workbench) -> np.ndarray:
        if self.method is None:
            return bench.generate(self.prompt, self.seed, self.generation)[0]
        with first_text_token_only(bench.pipe, self.method):
            return bench.generate(self.prompt, self.seed, self.generation)[0]


def ablation_jobs(prompts: list[str], request: TextAblationRequest, generation: dict[str, Any]) -> list[Job]:
    """Per prompt: the full generation, then one per method (named like their videos, p0.full, p0.mask)."""
    return [
        Job(f"p{p}.{method or 'full'}", AblationJob(prompt, request.seed, generation, method), label=f"prompt {p + 1}")
        for p, prompt in enumerate(prompts)
        for method in (None, *request.methods)
    ]


def ablation_rows(
    prompts: list[str], methods: Sequence[str], videos: dict[str, np.ndarray], settings: dict[str, Any]
) -> list[dict[str, Any]]:
    """One row per prompt and method: the ablated video scored against the full one."""
    rows = []
    for p, prompt in enumerate(prompts):
        full = videos[f"p{p}.full"]
        background = shapes.prompt_background(prompt, settings)
        for method in methods:
            ablated = videos[f"p{p}.{method}"]
            row = {
                "prompt": prompt,
                "method": method,
                "ssim": quality.ssim(ablated, full),
                "psnr": quality.psnr(ablated, full),
                "frame_mse": float(np.mean((ablated - full) ** 2)),
            }
            if background is not None:
                row["colour_full"] = shapes.measure_clip(full, background).color
                row["colour_ablated"] = shapes.measure_clip(ablated, background).color
            rows.append(row)
    return rows


def run_text_ablation(request: TextAblationRequest, progress: ProgressFn | None = None) -> tuple[Path, pd.DataFrame]:
    """Full and first-token-only generations per prompt, each a job on ``request.executor``; writes
    text_ablation.parquet/.csv, frames.safetensors and report.html."""
    from ..report.study_html import write_text_ablation_report
    from ..store import OutputDir, write_json, write_tensors

    checked_prompts_and_seeds(request.prompts, [request.seed])
    bad = [m for m in request.methods if m not in ABLATIONS]
    if bad or not request.methods:
        raise VditscopeError(f"unknown ablation {bad[0] if bad else '(none)'}; choose from {', '.join(ABLATIONS)}")
    executor = executor_for(request.executor, request.address)
    model_dir = model_directory(request.model)
    output = OutputDir(request.out, "text-ablation", files=TEXT_ABLATION_FILES, inputs=[model_dir],
                       overwrite=request.overwrite)  # fmt: skip
    with output:
        settings = model_settings(checked_model_dir(str(model_dir)))
        prompts = list(request.prompts) or default_prompts(settings)
        generation = request.generation_kwargs(settings)
        jobs = ablation_jobs(prompts, request, generation)
        check_generation(model_dir, generation, request.device, request.dtype, videos=len(jobs),
                         executor=executor.name, offload=request.offload)  # fmt: skip
        with executor.start(ModelSpec.of(str(model_dir), request)) as pool:
            family = pool.facts.family
            frames = run_jobs(pool, JobPlan(jobs, noun="generations"), progress).results
        videos = {job.key: video for job, video in zip(jobs, frames, strict=True)}
        table = pd.DataFrame(ablation_rows(prompts, request.methods, videos, settings))
        with output.staging() as staging:
            table.to_parquet(staging / "text_ablation.parquet", index=False)
            table.to_csv(staging / "text_ablation.csv", index=False)
            write_tensors(staging / "frames.safetensors", {k: torch.from_numpy(v) for k, v in videos.items()})
            info = {"model": str(model_dir), "family": family, "seed": request.seed, "prompts": prompts,
                    "methods": list(request.methods), "generation": generation}  # fmt: skip
            write_json(staging / "run.json", info)
            write_text_ablation_report(
                staging / "report.html", str(model_dir), family, request.seed, prompts, request.methods, table, videos
            )
    return output.path, table
