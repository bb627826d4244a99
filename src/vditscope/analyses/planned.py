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
from ..tiny import DEFAULT_MODEL
from . import quality
from .analyze import default_prompts, model_settings
from .generation import generate
from .options import GenerationOptions
from .sweep import load_plan


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
    from safetensors.torch import save_file

    from ..adapters.loading import load_pipeline, resolve_device
    from ..report.html import gif_bytes
    from ..store import atomic_run_dir, json_safe

    if request.prompt is not None and not request.prompt.strip():
        raise VditscopeError("empty prompt: --prompt needs text")
    edits = load_plan(request.plan) if request.plan is not None else []
    device = resolve_device(request.device)
    pipe, adapter, model_dir = load_pipeline(request.model or DEFAULT_MODEL, device, request.dtype)
    settings = model_settings(model_dir)
    prompt = request.prompt or default_prompts(settings)[0]
    generation = request.generation_kwargs(settings)
    num_layers = len({site.layer for site in adapter.sites(pipe.transformer) if site.kind == "self"})
    for edit in edits:
        if edit.layers is not None and max(edit.layers) >= num_layers:
            raise VditscopeError(f"the plan edits layer {max(edit.layers)}, but the model has {num_layers} layers")
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
    with atomic_run_dir(request.out) as staging:
        save_file({k: torch.from_numpy(v).contiguous() for k, v in frames.items()}, str(staging / "frames.safetensors"))
        (staging / "preview.gif").write_bytes(gif_bytes(np.concatenate(list(frames.values()), axis=2)))
        (staging / "metrics.json").write_text(json.dumps(json_safe(metrics), indent=1) + "\n")
    return Path(request.out), metrics
