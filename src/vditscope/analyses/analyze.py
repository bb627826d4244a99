"""The main job: generate with capture and write a run directory (stats, pooled maps, report)."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..capture import capture
from ..capture.intervene import intervene
from ..errors import VditscopeError
from ..store import atomic_run_dir, write_json, write_table, write_tensors
from ..store.map_names import MapName
from ..tiny import DEFAULT_MODEL
from .options import GenerationOptions

# Per-head token maps are kept while all of a run's token maps fit in this many bytes; above it
# they are stored as the mean over heads (shape (1, T, T)), which run.json records.
TOKEN_MAP_BUDGET = 32 * 2**20
DEFAULT_PROMPTS = ("a car driving on the highway", "a red car driving on the highway")


@dataclass
class AnalyzeRequest(GenerationOptions):
    """What to analyze; None fields take the model's defaults (vditscope.json, then the pipeline's)."""

    prompts: Sequence[str] = ()
    seeds: Sequence[int] = (0, 1)
    out: Path = Path("runs/analyze")
    layers: Sequence[int] | None = None
    capture_steps: Sequence[int] | None = None
    top_mass: str = "auto"
    map_tiles: int = 256
    map_steps: Sequence[int] | None = None
    plan: Path | None = None


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

    def pick(words: list[str], i: int) -> str:
        return words[i % len(words)]

    return [
        f"a {pick(colors, 2 * i)} {pick(shapes, i)} moving {pick(directions, i)} on a {pick(backgrounds, i)} background"
        for i in range(3)
    ]


def default_map_steps(steps: Sequence[int], count: int = 4) -> list[int]:
    """``count`` steps spread evenly over the captured ones (first and last included)."""
    steps = sorted(steps)
    if len(steps) <= count:
        return list(steps)
    picks = np.linspace(0, len(steps) - 1, count).round().astype(int)
    return [steps[i] for i in sorted(set(picks.tolist()))]


def run_analyze(request: AnalyzeRequest, progress: ProgressFn | None = None) -> Path:
    """Generate each prompt and seed with capture; write the run directory; return its path."""
    from ..adapters.loading import load_pipeline, resolve_device
    from ..report import write_report

    prompts = list(request.prompts)
    if any(not p.strip() for p in prompts):
        raise VditscopeError("empty prompt: every --prompt needs text")
    if not request.seeds:
        raise VditscopeError("no seeds given")
    model_dir_arg = request.model if request.model is not None else DEFAULT_MODEL
    device = resolve_device(request.device)
    pipe, adapter, model_dir = load_pipeline(model_dir_arg, device, request.dtype)
    settings = model_settings(model_dir)
    prompts = prompts or default_prompts(settings)
    generation = request.generation_kwargs(settings)
    # capture() checks the layer set (range, emptiness) before anything runs or is written
    num_layers = len({site.layer for site in adapter.sites(pipe.transformer)})
    total_steps = int(generation.get("num_inference_steps", 0)) or None
    if request.capture_steps is not None and total_steps is not None:
        bad = [s for s in request.capture_steps if not 0 <= s < total_steps]
        if bad:
            raise VditscopeError(f"step {bad[0]} is out of range: the schedule has {total_steps} steps")

    if request.map_tiles < 1:
        raise VditscopeError(f"--map-tiles must be positive, got {request.map_tiles}")
    captured = list(request.capture_steps) if request.capture_steps is not None else list(range(total_steps or 0))
    map_steps = list(request.map_steps) if request.map_steps is not None else default_map_steps(captured)
    bad = [s for s in map_steps if s not in captured]
    if bad and total_steps is not None:
        raise VditscopeError(f"map step {bad[0]} is not a captured step")

    edits = []
    if request.plan is not None:
        from .sweep import load_plan

        edits = load_plan(request.plan)
        bad_layers = [layer for edit in edits for layer in (edit.layers or ()) if layer >= num_layers]
        if bad_layers:
            raise VditscopeError(f"the plan edits layer {bad_layers[0]}, but the model has {num_layers} layers")

    runs = [(p, s) for p in range(len(prompts)) for s in request.seeds]
    tables, maps, videos, notes = [], {}, {}, []
    with ExitStack() as stack:
        if edits:
            stack.enter_context(intervene(pipe, edits))
        started = time.perf_counter()
        grid = text_tokens = None
        token_heads = "all"
        for index, (p, seed) in enumerate(runs):
            if progress:
                progress(f"prompt {p + 1}/{len(prompts)}, seed {seed}", index, len(runs))
            generator = torch.Generator(device=device).manual_seed(int(seed))
            with capture(
                pipe,
                layers=request.layers,
                steps=request.capture_steps,
                top_mass=request.top_mass,
                map_tiles=request.map_tiles,
                map_steps=map_steps,
            ) as cap:
                result = pipe(prompt=prompts[p], generator=generator, output_type="np", **generation)
            notes.extend(n for n in cap.notes if n not in notes)
            table = cap.table()
            table.insert(0, "prompt", p)
            table.insert(1, "seed", int(seed))
            table["generation"] = index
            tables.append(table)
            pooled = _pooled_maps(cap.records, p, int(seed))
            if index == 0:
                per_generation = sum(t.numel() * t.element_size() for n, t in pooled.items() if "token_map" in n)
                token_heads = "all" if per_generation * len(runs) <= TOKEN_MAP_BUDGET else "mean"
            if token_heads == "mean":
                pooled = {n: t.mean(0, keepdim=True) if n.startswith("token_map.") else t for n, t in pooled.items()}
            maps.update(pooled)
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

    from .structure import analyze_structure

    stats = pd.concat(tables, ignore_index=True)
    heads = int(stats["head"].max()) + 1 if len(stats) else 0
    layout = {"grid": list(grid) if grid else None, "text_tokens": text_tokens, "text_position": adapter.text_position}
    labels = {i: _token_labels(pipe, prompt, _text_length(maps)) for i, prompt in enumerate(prompts)}
    structure = analyze_structure(stats, maps, layout, labels)
    similarity = structure.similarity_table()
    run = {
        "model": str(model_dir),
        "family": adapter.family,
        "trained": settings.get("trained"),
        "layers": num_layers,
        "captured_layers": sorted(set(stats["layer"].tolist())) if len(stats) else [],
        "heads": heads,
        "layout": layout,
        "prompts": prompts,
        "text_token_labels": {str(i): tokens for i, tokens in labels.items()},
        "seeds": [int(s) for s in request.seeds],
        "steps": total_steps,
        "captured_steps": sorted(set(stats["step"].tolist())) if len(stats) else [],
        "generation": generation,
        "device": device,
        "dtype": request.dtype,
        "top_mass": request.top_mass,
        "map_tiles": request.map_tiles,
        "map_steps": map_steps,
        "token_map_heads": token_heads,
        "plan": str(request.plan) if request.plan is not None else None,
        "plan_edits": [edit.to_dict() for edit in edits],
        "similarity": {
            axis: float(similarity[similarity["axis"] == axis]["mean_similarity"].mean())
            for axis in sorted(set(similarity["axis"]))
        },
        "seconds": round(elapsed, 2),
        "notes": notes,
        "versions": _versions(),
    }
    with atomic_run_dir(request.out) as staging:
        write_json(staging / "run.json", run)
        write_table(staging / "stats.parquet", stats)
        write_tensors(staging / "maps.safetensors", maps, metadata={"vditscope": __version__})
        write_tensors(staging / "videos.safetensors", {k: torch.from_numpy(v) for k, v in videos.items()})
        write_table(staging / "similarity.parquet", similarity)
        write_table(staging / "heads.parquet", structure.heads)
        write_table(staging / "text_attention.parquet", structure.text)
        write_table(staging / "head_sinks.parquet", structure.sinks)
        write_report(staging / "report.html", run, stats, maps, videos, structure)
    return Path(request.out)


def _pooled_maps(records: list, prompt: int, seed: int) -> dict[str, torch.Tensor]:
    """Per-layer maps of the cond branch: name -> (heads, ...). Token maps are kept per step (float16);
    the other maps are averaged over the captured steps."""
    sums: dict[str, list[torch.Tensor]] = {}
    per_step: dict[str, torch.Tensor] = {}
    for record in records:
        if record.branch != "cond" or record.sample != 0:
            continue
        for key, tensor in record.maps.items():
            if key == "token_map":
                name = MapName(key, prompt, seed, record.kind, record.layer, record.step)
                per_step[str(name)] = tensor.to(torch.float16)
            else:
                name = MapName(key, prompt, seed, record.kind, record.layer)
                sums.setdefault(str(name), []).append(tensor.to(torch.float32))
    pooled = {name: torch.stack(items).mean(0) for name, items in sums.items()}
    return pooled | per_step


def _text_length(maps: dict[str, torch.Tensor]) -> int:
    """Number of text keys the captured text attention covers (0 when none)."""
    return max((int(t.shape[-1]) for n, t in maps.items() if n.startswith("text_received.")), default=0)


def _token_labels(pipe: Any, prompt: str, length: int) -> list[str]:
    """The text tokens of a prompt as the pipeline's tokenizer pads them to ``length`` (best effort:
    pipelines that add a template before the prompt get labels that may be shifted; [] on failure)."""
    tokenizer = getattr(pipe, "tokenizer", None)
    if tokenizer is None or length < 1:
        return []
    try:
        ids = tokenizer(prompt, max_length=length, padding="max_length", truncation=True)["input_ids"]
        return [str(t) for t in tokenizer.convert_ids_to_tokens(list(ids))][:length]
    except Exception:  # labels are decoration: a tokenizer failure must not stop the run
        return []


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
