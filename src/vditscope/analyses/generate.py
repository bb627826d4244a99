"""`vditscope generate --plan`: one generation with a sparsity plan applied, next to the dense one."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..adapters.loaded import model_directory
from ..adapters.settings import default_prompts, model_settings
from ..capture.intervene import AttentionEdit, intervene
from ..errors import VditscopeError
from ..executors import Job, JobPlan, ModelSpec, Workbench, checked_model_dir, executor_for, run_jobs
from ..media import gif_bytes
from ..stats.block_sparse import FLEX_TIMINGS
from ..store import files_of
from . import quality
from .memory_plan import check_generation
from .options import ExecutorOptions, checked_seed
from .sweep_tables import check_plan, load_plan

GENERATE_FILES = files_of("generate")


@dataclass
class GenerateRequest(ExecutorOptions):
    """A prompt, a seed and an optional plan; None fields take the model's defaults."""

    plan: Path | None = None
    prompt: str | None = None
    seed: int = 0
    out: Path = Path("runs/generate")


@dataclass(frozen=True)
class PlannedJob:
    """One seeded generation, dense (no edits) or under the plan's edits on the fast path (mask edits
    block-sparse through compiled FlexAttention): its frames and seconds, and with edits the share of
    attention entries dropped and the seconds FlexAttention spent compiling (apart from the time)."""

    prompt: str
    seed: int
    generation: dict[str, Any]
    edits: tuple[AttentionEdit, ...] = ()

    def __call__(self, bench: Workbench) -> dict[str, Any]:
        start = time.perf_counter()
        if not self.edits:
            frames = bench.generate(self.prompt, self.seed, self.generation)[0]
            return {"frames": frames, "seconds": time.perf_counter() - start}
        compiled = FLEX_TIMINGS.compile_s
        with intervene(bench.pipe, list(self.edits), fast=True) as session:
            frames, _ = bench.generate(self.prompt, self.seed, self.generation)
        compile_s = FLEX_TIMINGS.compile_s - compiled
        return {
            "frames": frames,
            "seconds": time.perf_counter() - start - compile_s,
            "compile_seconds": compile_s,
            "sparsity": session.totals.sparsity,
            "mass_dropped": session.totals.mass_dropped,
        }


def run_generate(request: GenerateRequest) -> tuple[Path, dict[str, Any]]:
    """Generate dense and (with a plan) planned, as jobs on ``request.executor``; write frames.safetensors,
    preview.gif (side by side) and metrics.json (PSNR/SSIM of planned vs dense, null when identical)."""
    from ..store import OutputDir, json_safe, write_tensors

    if request.prompt is not None and not request.prompt.strip():
        raise VditscopeError("empty prompt: --prompt needs text")
    checked_seed(request.seed)
    executor = executor_for(request.executor, request.address)
    edits = load_plan(request.plan) if request.plan is not None else []
    model_dir = model_directory(request.model)
    output = OutputDir(request.out, "generate", files=GENERATE_FILES, inputs=[model_dir, request.plan],
                       overwrite=request.overwrite)  # fmt: skip
    with output:
        settings = model_settings(checked_model_dir(str(model_dir)))
        prompt = request.prompt or default_prompts(settings)[0]
        generation = request.generation_kwargs(settings)
        steps = int(generation.get("num_inference_steps", 0)) or None
        jobs = [Job("dense", PlannedJob(prompt, request.seed, generation))]
        if edits:
            jobs.append(Job("planned", PlannedJob(prompt, request.seed, generation, tuple(edits))))
        check_generation(model_dir, generation, request.device, request.dtype, videos=len(jobs),
                         executor=executor.name, offload=request.offload)  # fmt: skip
        with executor.start(ModelSpec.of(str(model_dir), request)) as pool:
            check_plan(edits, steps=steps, layers=pool.facts.self_layers, heads=pool.facts.heads)
            results = run_jobs(pool, JobPlan(jobs, noun="generations")).results
        frames = {job.key: result["frames"] for job, result in zip(jobs, results, strict=True)}
        metrics: dict[str, Any] = {"prompt": prompt, "seed": request.seed, "model": str(model_dir), "plan": None}
        metrics["seconds"] = {"dense": results[0]["seconds"]}
        if edits:
            metrics |= {
                "plan": str(request.plan),
                "psnr": quality.psnr(frames["planned"], frames["dense"]),
                "ssim": quality.ssim(frames["planned"], frames["dense"]),
                "sparsity": results[1]["sparsity"],
                "mass_dropped": results[1]["mass_dropped"],
            }
            metrics["seconds"] |= {
                "planned": results[1]["seconds"],
                "compile": results[1]["compile_seconds"],
                "speedup": results[0]["seconds"] / max(results[1]["seconds"], 1e-9),
            }
        metrics["executor"] = executor.name
        with output.staging() as staging:
            write_tensors(staging / "frames.safetensors", {k: torch.from_numpy(v) for k, v in frames.items()})
            (staging / "preview.gif").write_bytes(gif_bytes(np.concatenate(list(frames.values()), axis=2)))
            (staging / "metrics.json").write_text(json.dumps(json_safe(metrics), indent=1) + "\n")
    return output.path, metrics
