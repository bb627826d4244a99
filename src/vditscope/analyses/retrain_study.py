"""Before and after retraining: the sinks of each layer, the sparsity sensitivity of the retrained
layers (a per-layer bottom-k sweep), and the retrained model's videos against the original's.

The paper's claim to test: re-initializing and retraining degenerate (sink-dominated) final blocks
removes their sinks and makes those layers sparsifiable again, at little cost in quality.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..adapters.loaded import generate
from ..adapters.settings import default_prompts, model_settings
from ..errors import VditscopeError
from ..progress import ProgressFn
from ..store import OutputDir, files_of, write_json, write_table, write_tensors
from ..thresholds import SINK_RATIO
from . import quality
from .options import GenerationOptions
from .sinks import SinksRequest, video_sinks
from .sweep import SweepRequest, run_sweep
from .sweep_tables import level_column

MODELS = ("original", "retrained")
STUDY_FILES = files_of("retrain", stage="study")  # what the study adds to the retraining run's directory


@dataclass
class RetrainStudyRequest:
    """The two models, the retrained layers, and how much to measure."""

    original: str
    retrained: Path
    layers: Sequence[int]
    out: Path
    prompts: Sequence[str] = ()
    seeds: Sequence[int] = (0,)
    levels: Sequence[float] = (0.5, 0.8, 0.9)
    method: str = "bottom-k"
    threshold: float = SINK_RATIO
    device: str = "auto"
    num_inference_steps: int | None = None


def run_retrain_study(request: RetrainStudyRequest, progress: ProgressFn | None = None) -> dict[str, pd.DataFrame]:
    """Measure both models; write study.json, study_sinks.parquet, study_sparsity.parquet,
    study_quality.parquet, the two sweeps (sweep-original/, sweep-retrained/) and study.html in out."""
    from ..adapters.loading import load_pipeline, resolve_device, resolve_model_dir
    from ..report.retrain_html import write_study_report

    if not request.layers:
        raise VditscopeError("the study needs the retrained layers")
    # the study lives in the retraining run's directory: the same output, resumed (store/output.py)
    original_dir = resolve_model_dir(request.original)
    with OutputDir(request.out, "retrain", files=STUDY_FILES, inputs=[original_dir], resumable=True) as output:
        out = output.open()
        models = {"original": str(request.original), "retrained": str(request.retrained)}
        settings = model_settings(original_dir)
        prompts = list(request.prompts) or default_prompts(settings)[:2]
        layers = sorted({int(layer) for layer in request.layers})

        sink_rows = []
        for i, (name, model) in enumerate(models.items()):
            if progress:
                progress(f"study: sinks of the {name} model", i, 2)
            result = video_sinks(
                SinksRequest(
                    model=model, prompts=prompts, seeds=request.seeds, threshold=request.threshold, ablation=False,
                    device=request.device, num_inference_steps=request.num_inference_steps, out=out,
                )
            )  # fmt: skip
            summary = result.layers.assign(model=name, retrained=result.layers["layer"].isin(layers))
            sink_rows.append(summary)
        sinks = pd.concat(sink_rows, ignore_index=True)

        sweeps = []
        for name, model in models.items():
            sweep_dir = run_sweep(
                SweepRequest(
                    model=model, mode="sparsity", scope="per-layer", method=request.method,
                    levels=tuple(request.levels), layers=layers, prompts=prompts, seeds=request.seeds,
                    out=out / f"sweep-{name}", device=request.device, num_inference_steps=request.num_inference_steps,
                ),
                _sweep_progress(progress, name),
            )  # fmt: skip
            table = pd.read_parquet(sweep_dir / "sweep.parquet")
            sweeps.append(table.assign(model=name))
        sparsity = _sensitivity(pd.concat(sweeps, ignore_index=True))

        device = resolve_device(request.device)
        pipes = {name: load_pipeline(model, device)[0] for name, model in models.items()}
        generation = GenerationOptions(num_inference_steps=request.num_inference_steps).generation_kwargs(settings)
        rows: list[dict[str, Any]] = []
        videos: dict[str, Any] = {}
        for prompt in prompts:
            for seed in request.seeds:
                if progress:
                    progress("study: quality against the original", len(rows), len(prompts) * len(request.seeds))
                frames = {name: generate(pipe, prompt, seed, generation, device) for name, pipe in pipes.items()}
                (original, original_latents), (retrained, retrained_latents) = frames["original"], frames["retrained"]
                rows.append(
                    {
                        "prompt": prompt,
                        "seed": int(seed),
                        "psnr": quality.psnr(retrained, original),
                        "ssim": quality.ssim(retrained, original),
                        "latent_mse": quality.latent_mse(retrained_latents, original_latents),
                    }
                )
                if not videos:
                    videos = {"original": original, "retrained": retrained, "prompt": prompt}
        quality_table = pd.DataFrame(rows)
        tables = {"sinks": sinks, "sparsity": sparsity, "quality": quality_table}
        for name, table in tables.items():
            write_table(out / f"study_{name}.parquet", table)
        if videos:  # the side-by-side video of the report, kept so that `vditscope report` can render it again
            frames = {name: torch.from_numpy(np.ascontiguousarray(videos[name])) for name in MODELS}
            write_tensors(out / "study_videos.safetensors", frames)
        write_json(
            out / "study.json",
            {"models": models, "layers": layers, "prompts": prompts, "seeds": list(request.seeds),
             "levels": list(request.levels), "method": request.method, "threshold": request.threshold,
             "video_prompt": videos.get("prompt"), "summary": summarize(tables, layers)},
        )  # fmt: skip
        write_study_report(out / "study.html", models, layers, tables, videos, out / "loss.png")
        return tables


def _sweep_progress(progress: ProgressFn | None, name: str) -> ProgressFn | None:
    if progress is None:
        return None
    return lambda message, done, total: progress(f"study: sweep of the {name} model ({message})", done, total)


def _sensitivity(table: pd.DataFrame) -> pd.DataFrame:
    """Per model, layer and level: mean PSNR/SSIM against that model's own dense video."""
    grouped = table.groupby(["model", "layer", level_column(table)], as_index=False)
    return grouped.agg(psnr=("psnr", "mean"), ssim=("ssim", "mean"), mass_dropped=("mass_dropped", "mean"))


def summarize(tables: dict[str, pd.DataFrame], layers: list[int]) -> dict[str, Any]:
    """The headline figures of the retrained layers, before -> after."""
    sinks = tables["sinks"]
    chosen = sinks[sinks["layer"].isin(layers)]
    summary: dict[str, Any] = {}
    for name in MODELS:
        part = chosen[chosen["model"] == name]
        summary[name] = {
            "sink_heads": int(part["sink_heads"].sum()),
            "heads": int(part["heads"].sum()),
            "max_ratio": float(part["max_ratio"].max()),
            "sink_share": float(part["sink_share"].mean()),
        }
        sparsity = tables["sparsity"]
        rows = sparsity[sparsity["model"] == name]
        summary[name]["psnr_by_level"] = {
            f"{level:g}": float(group["psnr"].clip(upper=100).mean()) for level, group in rows.groupby(rows.columns[2])
        }
    quality_table = tables["quality"]
    summary["quality"] = {
        "psnr": float(quality_table["psnr"].mean()),
        "ssim": float(quality_table["ssim"].mean()),
    }
    return summary
