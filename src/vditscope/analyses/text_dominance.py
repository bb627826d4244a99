"""`vditscope text-ablation`: how much of a generation the first text token alone decides.

Each prompt is generated in full and with only its first text token reaching the video (masked
out of attention, or the embedding truncated); the ablated video is scored against the full one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..capture.text_ablation import ABLATIONS, first_text_token_only
from ..data import shapes
from ..errors import VditscopeError
from . import quality
from .generation import generate
from .loaded import LoadedPipeline, model_directory
from .options import GenerationOptions, checked_prompts_and_seeds

ProgressFn = Callable[[str, int, int], None]


TEXT_ABLATION_FILES = ("text_ablation.parquet", "text_ablation.csv", "frames.safetensors", "report.html")


@dataclass
class TextAblationRequest(GenerationOptions):
    """Prompts, seed and ablation methods; None fields take the model's defaults."""

    prompts: Sequence[str] = ()
    seed: int = 0
    methods: Sequence[str] = ABLATIONS
    out: Path = Path("runs/text-ablation")


def run_text_ablation(request: TextAblationRequest, progress: ProgressFn | None = None) -> tuple[Path, pd.DataFrame]:
    """Full and first-token-only generations per prompt; writes text_ablation.parquet/.csv,
    frames.safetensors and report.html."""
    from ..report.study_html import write_text_ablation_report
    from ..store import OutputDir, write_tensors

    checked_prompts_and_seeds(request.prompts, [request.seed])
    bad = [m for m in request.methods if m not in ABLATIONS]
    if bad or not request.methods:
        raise VditscopeError(f"unknown ablation {bad[0] if bad else '(none)'}; choose from {', '.join(ABLATIONS)}")
    model_dir = model_directory(request)
    output = OutputDir(request.out, "text-ablation", files=TEXT_ABLATION_FILES, inputs=[model_dir],
                       overwrite=request.overwrite)  # fmt: skip
    with output:
        loaded = LoadedPipeline.load(request, model_dir)
        pipe, settings, device = loaded.pipe, loaded.settings, loaded.device
        prompts = loaded.prompts(request.prompts)
        generation = loaded.generation(request)
        rows, videos = [], {}
        total = len(prompts) * (1 + len(request.methods))
        for p, prompt in enumerate(prompts):
            if progress:
                progress(f"prompt {p + 1}/{len(prompts)}", p * (1 + len(request.methods)), total)
            full, _ = generate(pipe, prompt, request.seed, generation, device)
            videos[f"p{p}.full"] = full
            background = shapes.prompt_background(prompt, settings)
            for method in request.methods:
                with first_text_token_only(pipe, method):
                    ablated, _ = generate(pipe, prompt, request.seed, generation, device)
                videos[f"p{p}.{method}"] = ablated
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
        table = pd.DataFrame(rows)
        with output.staging() as staging:
            table.to_parquet(staging / "text_ablation.parquet", index=False)
            table.to_csv(staging / "text_ablation.csv", index=False)
            write_tensors(staging / "frames.safetensors", {k: torch.from_numpy(v) for k, v in videos.items()})
            write_text_ablation_report(
                staging / "report.html",
                str(loaded.model_dir),
                loaded.adapter.family,
                request.seed,
                prompts,
                request.methods,
                table,
                videos,
            )
    return output.path, table
