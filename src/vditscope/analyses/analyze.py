"""The main job: generate with capture and write a run directory (stats, pooled maps, report)."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..capture import capture
from ..errors import VditscopeError
from ..store import atomic_run_dir, write_json, write_table, write_tensors
from ..tiny import DEFAULT_MODEL

DEFAULT_PROMPTS = ("a car driving on the highway", "a red car driving on the highway")


@dataclass
class AnalyzeRequest:
    """What to analyze; None fields take the model's defaults (vditscope.json, then the pipeline's)."""

    model: str | None = None
    prompts: Sequence[str] = ()
    seeds: Sequence[int] = (0,)
    out: Path = Path("runs/analyze")
    layers: Sequence[int] | None = None
    capture_steps: Sequence[int] | None = None
    height: int | None = None
    width: int | None = None
    num_frames: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    device: str = "cpu"
    dtype: str = "float32"
    top_mass: str = "auto"
    generation_overrides: dict[str, Any] = field(default_factory=dict)


ProgressFn = Callable[[str, int, int], None]


def model_settings(model_dir: Path) -> dict[str, Any]:
    """vditscope.json of a model directory (generation settings, vocabulary), or {}."""
    path = model_dir / "vditscope.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise VditscopeError(f"{path} is not valid JSON ({exc})") from exc


def default_prompts(settings: dict[str, Any]) -> list[str]:
    vocabulary = settings.get("vocabulary")
    if not vocabulary:
        return list(DEFAULT_PROMPTS)
    colors, shapes, directions, backgrounds = (
        vocabulary[key] for key in ("colors", "shapes", "directions", "backgrounds")
    )
    return [
        f"a {colors[0]} {shapes[0]} moving {directions[0]} on a {backgrounds[0]} background",
        f"a {colors[min(2, len(colors) - 1)]} {shapes[-1]} moving {directions[-1]} on a {backgrounds[0]} background",
    ]


def _generation_kwargs(request: AnalyzeRequest, settings: dict[str, Any]) -> dict[str, Any]:
    generation = dict(settings.get("generation", {}))
    for key in ("height", "width", "num_frames", "num_inference_steps", "guidance_scale"):
        value = getattr(request, key)
        if value is not None:
            generation[key] = value
    generation.update(request.generation_overrides)
    for key in ("height", "width", "num_frames", "num_inference_steps"):
        if key in generation and int(generation[key]) < 1:
            raise VditscopeError(f"{key} must be positive, got {generation[key]}")
    return generation


def run_analyze(request: AnalyzeRequest, progress: ProgressFn | None = None) -> Path:
    """Generate each prompt and seed with capture; write the run directory; return its path."""
    from ..adapters.loading import load_pipeline
    from ..report import write_report

    prompts = list(request.prompts)
    if any(not p.strip() for p in prompts):
        raise VditscopeError("empty prompt: every --prompt needs text")
    if not request.seeds:
        raise VditscopeError("no seeds given")
    model_dir_arg = request.model if request.model is not None else DEFAULT_MODEL
    pipe, adapter, model_dir = load_pipeline(model_dir_arg, request.device, request.dtype)
    settings = model_settings(model_dir)
    prompts = prompts or default_prompts(settings)
    generation = _generation_kwargs(request, settings)
    # capture() checks the layer set (range, emptiness) before anything runs or is written
    num_layers = len({site.layer for site in adapter.sites(pipe.transformer)})
    total_steps = int(generation.get("num_inference_steps", 0)) or None
    if request.capture_steps is not None and total_steps is not None:
        bad = [s for s in request.capture_steps if not 0 <= s < total_steps]
        if bad:
            raise VditscopeError(f"step {bad[0]} is out of range: the schedule has {total_steps} steps")

    runs = [(p, s) for p in range(len(prompts)) for s in request.seeds]
    tables, maps, videos, notes = [], {}, {}, []
    started = time.perf_counter()
    grid = text_tokens = None
    for index, (p, seed) in enumerate(runs):
        if progress:
            progress(f"prompt {p + 1}/{len(prompts)}, seed {seed}", index, len(runs))
        generator = torch.Generator(device=request.device).manual_seed(int(seed))
        with capture(pipe, layers=request.layers, steps=request.capture_steps, top_mass=request.top_mass) as cap:
            result = pipe(prompt=prompts[p], generator=generator, output_type="np", **generation)
        notes.extend(n for n in cap.notes if n not in notes)
        table = cap.table()
        table.insert(0, "prompt", p)
        table.insert(1, "seed", int(seed))
        table["generation"] = index
        tables.append(table)
        maps.update(_pooled_maps(cap.records, f"p{p}.s{seed}"))
        videos[f"p{p}.s{seed}"] = np.asarray(result.frames[0], dtype=np.float32)
        for record in cap.records:
            if record.kind == "self" and record.layout is not None:
                grid = record.layout.grid
                text_tokens = record.layout.num_text
                break
    if progress:
        progress("writing the run directory", len(runs), len(runs))
    elapsed = time.perf_counter() - started

    import pandas as pd

    stats = pd.concat(tables, ignore_index=True)
    heads = int(stats["head"].max()) + 1 if len(stats) else 0
    run = {
        "model": str(model_dir),
        "family": adapter.family,
        "trained": settings.get("trained"),
        "layers": num_layers,
        "captured_layers": sorted(set(stats["layer"].tolist())) if len(stats) else [],
        "heads": heads,
        "layout": {
            "grid": list(grid) if grid else None,
            "text_tokens": text_tokens,
            "text_position": adapter.text_position,
        },
        "prompts": prompts,
        "seeds": [int(s) for s in request.seeds],
        "steps": total_steps,
        "captured_steps": sorted(set(stats["step"].tolist())) if len(stats) else [],
        "generation": generation,
        "device": request.device,
        "dtype": request.dtype,
        "top_mass": request.top_mass,
        "seconds": round(elapsed, 2),
        "notes": notes,
        "versions": _versions(),
    }
    with atomic_run_dir(request.out) as staging:
        write_json(staging / "run.json", run)
        write_table(staging / "stats.parquet", stats)
        write_tensors(staging / "maps.safetensors", maps, metadata={"vditscope": __version__})
        write_tensors(staging / "videos.safetensors", {k: torch.from_numpy(v) for k, v in videos.items()})
        write_report(staging / "report.html", run, stats, maps, videos)
    return Path(request.out)


def _pooled_maps(records: list, prefix: str) -> dict[str, torch.Tensor]:
    """Per-layer maps of the cond branch, averaged over captured steps: name -> (heads, ...)."""
    sums: dict[str, list[torch.Tensor]] = {}
    for record in records:
        if record.branch != "cond" or record.sample != 0:
            continue
        for key, tensor in record.maps.items():
            name = f"{key}.{prefix}.{record.kind}.layer{record.layer}"
            sums.setdefault(name, []).append(tensor.to(torch.float32))
    return {name: torch.stack(items).mean(0) for name, items in sums.items()}


def _versions() -> dict[str, str]:
    import diffusers
    import transformers

    return {
        "vditscope": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }
