"""`vditscope generate --plan`: one generation with a sparsity plan applied, next to the dense one."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..capture.intervene import intervene
from ..errors import VditscopeError
from ..media import gif_bytes
from . import quality
from .generation import generate
from .loaded import LoadedPipeline, model_directory
from .options import GenerationOptions, checked_seed
from .sweep_tables import check_plan, load_plan

GENERATE_FILES = ("frames.safetensors", "preview.gif", "metrics.json")


@dataclass
class GenerateRequest(GenerationOptions):
    """A prompt, a seed and an optional plan; None fields take the model's defaults."""

    plan: Path | None = None
    prompt: str | None = None
    seed: int = 0
    out: Path = Path("runs/generate")


def run_generate(request: GenerateRequest) -> tuple[Path, dict[str, Any]]:
    """Generate dense and (with a plan) planned; write frames.safetensors, preview.gif (side by side)
    and metrics.json (PSNR/SSIM of planned vs dense, null when identical)."""
    from ..store import OutputDir, json_safe, write_tensors

    if request.prompt is not None and not request.prompt.strip():
        raise VditscopeError("empty prompt: --prompt needs text")
    checked_seed(request.seed)
    edits = load_plan(request.plan) if request.plan is not None else []
    model_dir = model_directory(request)
    output = OutputDir(request.out, "generate", files=GENERATE_FILES, inputs=[model_dir, request.plan],
                       overwrite=request.overwrite)  # fmt: skip
    with output:
        loaded = LoadedPipeline.load(request, model_dir)
        pipe, device, model_dir = loaded.pipe, loaded.device, loaded.model_dir
        prompt = request.prompt or loaded.prompts()[0]
        generation = loaded.generation(request)
        steps = int(generation.get("num_inference_steps", 0)) or None
        check_plan(edits, steps=steps, layers=loaded.self_layers, heads=loaded.heads)
        frames = {}
        frames["dense"], _ = generate(pipe, prompt, request.seed, generation, device)
        metrics: dict[str, Any] = {"prompt": prompt, "seed": request.seed, "model": str(model_dir), "plan": None}
        if edits:
            with intervene(pipe, edits) as session:
                frames["planned"], _ = generate(pipe, prompt, request.seed, generation, device)
            metrics |= {
                "plan": str(request.plan),
                "psnr": quality.psnr(frames["planned"], frames["dense"]),
                "ssim": quality.ssim(frames["planned"], frames["dense"]),
                "sparsity": session.totals.sparsity,
                "mass_dropped": session.totals.mass_dropped,
            }
        with output.staging() as staging:
            write_tensors(staging / "frames.safetensors", {k: torch.from_numpy(v) for k, v in frames.items()})
            (staging / "preview.gif").write_bytes(gif_bytes(np.concatenate(list(frames.values()), axis=2)))
            (staging / "metrics.json").write_text(json.dumps(json_safe(metrics), indent=1) + "\n")
    return output.path, metrics
