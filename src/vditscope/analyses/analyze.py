"""The main job: generate with capture and write a run directory (stats, pooled maps, report)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..adapters.loading import resolve_device
from ..adapters.published import published_model
from ..adapters.settings import DEFAULT_PROMPTS, default_prompts, model_settings
from ..adapters.token_counts import transformer_size
from ..capture.intervene import AttentionEdit
from ..errors import VditscopeError
from ..executors import Executor, Job, JobPlan, ModelFacts, ModelSpec, checked_model_dir, executor_for, run_jobs
from ..progress import ProgressFn
from ..report import write_report
from ..report.explorer import FRAME_BUDGET as EXPLORER_FRAME_BUDGET
from ..report.explorer import MAP_BUDGET as EXPLORER_MAP_BUDGET
from ..store import OutputDir, files_of, library_versions, write_json, write_table, write_tensors
from ..store.run_writer import peak_memory
from ..tiny import DEFAULT_MODEL
from .captured import CaptureCache, Captured, CaptureJob, writable
from .memory_plan import MemoryPlan, MemoryRequest, ModelShape, directory_shape, plan_memory
from .options import ExecutorOptions, checked_layers, checked_prompts_and_seeds, checked_steps
from .structure import Structure, analyze_structure
from .sweep_tables import check_plan, load_plan

# Per-head token maps are kept while all of a run's token maps fit in this many bytes; above it
# they are stored as the mean over heads (shape (1, T, T)), which run.json records.
TOKEN_MAP_BUDGET = 32 * 2**20
TILED_MAPS = ("token_map.", "text_tile_map.")  # maps over query tiles: per head while they fit the budget
# what `vditscope analyze` writes at the top of its run directory (the output policy's declared names)
RUN_FILES = files_of("analyze")


@dataclass
class AnalyzeRequest(ExecutorOptions):
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


def expected_run_bytes(generation: dict[str, Any], generations: int) -> int:
    """A rough size of a run directory, checked against the free space before anything runs: the videos
    (float32) in the run, in the resumable cache beside it and in the report, plus the token maps and what the
    report's attention explorer embeds (base64: 4 bytes per 3)."""
    size = [int(generation.get(key, 0) or 0) for key in ("num_frames", "height", "width")]
    explorer = (EXPLORER_MAP_BUDGET + EXPLORER_FRAME_BUDGET) * 4 // 3
    return 3 * generations * int(np.prod(size)) * 3 * 4 + 2 * TOKEN_MAP_BUDGET + explorer


def recorded_generation(generation: dict[str, Any], frames: int, notes: list[str]) -> dict[str, Any]:
    """The generation settings as they ran: pipelines round ``num_frames`` to what their VAE can decode
    (Wan: 4k + 1), so the frame count of the videos is recorded, with a note when it differs."""
    asked = generation.get("num_frames")
    if asked is None or int(asked) == frames:
        return generation
    notes.append(f"the pipeline generated {frames} frames for num_frames {asked} (it rounds to what its VAE decodes)")
    return {**generation, "num_frames": frames, "num_frames_requested": asked}


def default_map_steps(steps: Sequence[int], count: int = 4) -> list[int]:
    """``count`` steps spread evenly over the captured ones (first and last included)."""
    steps = sorted(steps)
    if len(steps) <= count:
        return list(steps)
    picks = np.linspace(0, len(steps) - 1, count).round().astype(int)
    return [steps[i] for i in sorted(set(picks.tolist()))]


@dataclass
class AnalysisPlan:
    """What a request resolves to before anything loads: the model, prompts, settings, steps and plan."""

    model: str
    model_dir: Path
    settings: dict[str, Any]
    prompts: list[str]
    seeds: list[int]
    generation: dict[str, Any]
    total_steps: int | None
    map_steps: list[int]
    edits: list[AttentionEdit]

    @property
    def runs(self) -> list[tuple[int, int]]:
        """(prompt index, seed) of every generation, in run order."""
        return [(p, s) for p in range(len(self.prompts)) for s in self.seeds]


@dataclass
class Gathered:
    """The generations' results merged into one run: the table, pooled maps, videos and labels."""

    stats: pd.DataFrame
    maps: dict[str, torch.Tensor]
    videos: dict[str, np.ndarray]
    notes: list[str]
    layout: dict[str, Any]
    labels: dict[int, list[str]]
    token_heads: str
    backends: list[str]  # the statistics paths that ran: "torch" (chunked), "triton" (the fused kernel)


def plan_analysis(request: AnalyzeRequest) -> AnalysisPlan:
    """Every check that the options and the model's files allow, before anything loads or is written."""
    prompts = list(request.prompts)
    checked_prompts_and_seeds(prompts, request.seeds)
    if request.map_tiles < 1:
        raise VditscopeError(f"--map-tiles must be positive, got {request.map_tiles}")
    model = request.model if request.model is not None else DEFAULT_MODEL
    model_dir = checked_model_dir(model)
    settings = model_settings(model_dir)
    generation = request.generation_kwargs(settings)
    total_steps = int(generation.get("num_inference_steps", 0)) or None
    checked_steps(request.capture_steps, total_steps)
    captured = list(request.capture_steps) if request.capture_steps is not None else list(range(total_steps or 0))
    map_steps = list(request.map_steps) if request.map_steps is not None else default_map_steps(captured)
    bad = [s for s in map_steps if s not in captured]
    if bad and total_steps is not None:
        raise VditscopeError(f"map step {bad[0]} is not a captured step")
    edits = load_plan(request.plan) if request.plan is not None else []
    check_plan(edits, steps=total_steps)
    return AnalysisPlan(
        model=model,
        model_dir=model_dir,
        settings=settings,
        prompts=prompts or default_prompts(settings),
        seeds=[int(s) for s in request.seeds],
        generation=generation,
        total_steps=total_steps,
        map_steps=map_steps,
        edits=edits,
    )


def run_analyze(request: AnalyzeRequest, progress: ProgressFn | None = None, executor: Executor | None = None) -> Path:
    """Generate each prompt and seed with capture; write the run directory; return its path.

    The generations run on ``executor`` (default: the one ``request.executor`` names); finished ones
    are kept beside the run directory until it is written, so an interrupted analysis resumes."""
    plan = plan_analysis(request)
    executor = executor or executor_for(request.executor, request.address)
    memory = analysis_memory(request, plan, executor.name)  # before any weight loads: refuses what cannot fit
    output = OutputDir(
        request.out, "analyze", files=RUN_FILES, inputs=[plan.model_dir, request.plan], overwrite=request.overwrite,
        expected_bytes=expected_run_bytes(plan.generation, len(plan.runs)),
    )  # fmt: skip
    with output:
        cache = CaptureCache(output.path)
        with executor.start(ModelSpec.of(plan.model, request)) as pool:
            facts = pool.facts
            # capture() checks the layer set (range, emptiness) before anything runs or is written
            check_plan(plan.edits, layers=facts.layers, heads=facts.heads)
            checked_layers(request.layers, facts.layers)  # here, so that no worker starts on a bad set
            started = time.perf_counter()
            jobs = capture_jobs(request, plan, memory.chunk_size if memory else None)
            keyed = [Job(key=job.key(str(plan.model_dir), request.dtype), task=job) for job in jobs]
            results = run_jobs(pool, JobPlan(keyed, store=cache, noun="generations"), progress).results
        if progress:
            progress("writing the run directory", len(jobs), len(jobs))
        elapsed = time.perf_counter() - started
        gathered = gather(plan, results, facts.text_position)
        structure = analyze_structure(gathered.stats, gathered.maps, gathered.layout, gathered.labels)
        similarity = structure.similarity_table()
        run = run_record(request, plan, facts, gathered, similarity, elapsed, executor.name)
        peak = peak_memory(facts.device)
        run["memory"] = memory.record(peak) if memory else {"estimate": None, "checked": False, "peak": peak}
        write_run(output, run, gathered, structure, similarity)
        cache.remove()
    return output.path


def analysis_memory(request: AnalyzeRequest, plan: AnalysisPlan, executor: str) -> MemoryPlan | None:
    """The run's memory plan from the model's files and the requested sizes (nothing loaded): the estimate,
    the statistics' chunk fitted to the free memory, and the refusal of a run that cannot fit (checked for
    the local executor; VDITSCOPE_SKIP_MEMORY_CHECK=1 skips it); None where another executor's driver cannot
    read the model's files."""
    memory_request = memory_request_of(request, plan.generation, plan.map_steps, len(plan.runs))
    shape = directory_shape(plan.model_dir, executor)
    return None if shape is None else plan_memory(shape, memory_request, check=executor == "local")


def memory_request_of(
    request: AnalyzeRequest, generation: dict[str, Any], map_steps: Sequence[int], generations: int
) -> MemoryRequest:
    """The sizes an analyze request asks the memory plan for."""
    return MemoryRequest(
        generation, resolve_device(request.device), request.dtype, layers=request.layers,
        capture_steps=request.capture_steps, map_tiles=request.map_tiles, map_steps=len(map_steps),
        generations=generations, top_mass=request.top_mass, offload=request.offload,
        context_parallel=request.context_parallel,
    )  # fmt: skip


def estimate_analysis(
    request: AnalyzeRequest, published: str | None = None, generations: int | None = None
) -> MemoryPlan:
    """What `vditscope memory` prints: the (unchecked) memory plan of an analyze request, from the model's
    files or, with ``published``, from a published checkpoint's configs (nothing on disk, nothing loaded);
    ``generations`` overrides the run's prompts x seeds."""
    if published is None:
        plan = plan_analysis(request)
        memory_request = memory_request_of(request, plan.generation, plan.map_steps, generations or len(plan.runs))
        return plan_memory(ModelShape.from_directory(plan.model_dir), memory_request, check=False)
    if request.model is not None:
        raise VditscopeError("give --model or --published, not both")
    model = published_model(published)
    shape = ModelShape.from_published(model)
    defaults = {"height": model.height, "width": model.width, "num_frames": model.num_frames}
    defaults |= {"num_inference_steps": model.num_inference_steps, "guidance_scale": model.guidance_scale}
    generation = request.generation_kwargs({"generation": {**defaults, "max_sequence_length": model.text_tokens}})
    total = int(generation["num_inference_steps"])
    checked_steps(request.capture_steps, total)
    checked_layers(request.layers, transformer_size(shape.family, shape.transformer).layers)
    captured = list(request.capture_steps) if request.capture_steps is not None else list(range(total))
    count = generations or len(request.prompts or DEFAULT_PROMPTS) * len(request.seeds)
    memory_request = memory_request_of(request, generation, default_map_steps(captured), count)
    return plan_memory(shape, memory_request, check=False)


def capture_jobs(request: AnalyzeRequest, plan: AnalysisPlan, chunk_size: int | None = None) -> list[CaptureJob]:
    """One capture job per prompt and seed (``chunk_size``: the statistics' chunk the memory plan fitted)."""
    return [
        CaptureJob(
            index=index,
            prompt_index=p,
            prompt=plan.prompts[p],
            seed=seed,
            generation=plan.generation,
            layers=tuple(request.layers) if request.layers is not None else None,
            capture_steps=tuple(request.capture_steps) if request.capture_steps is not None else None,
            top_mass=request.top_mass,
            map_tiles=request.map_tiles,
            map_steps=tuple(plan.map_steps),
            edits=tuple(plan.edits),
            chunk_size=chunk_size,
        )
        for index, (p, seed) in enumerate(plan.runs)
    ]


def gather(plan: AnalysisPlan, results: list[Captured], text_position: str | None) -> Gathered:
    """Merge the generations: one table, the pooled maps (per head while they fit TOKEN_MAP_BUDGET, else
    head means), the videos, the notes, the token layout and each prompt's token labels."""
    tables, maps, videos, notes = [], {}, {}, []
    grid = text_tokens = None
    token_heads = "all"
    for index, ((p, seed), result) in enumerate(zip(plan.runs, results, strict=True)):
        notes.extend(n for n in result.notes if n not in notes)
        tables.append(result.table)
        pooled = result.maps
        if index == 0:
            per_generation = sum(t.numel() * t.element_size() for n, t in pooled.items() if n.startswith(TILED_MAPS))
            token_heads = "all" if per_generation * len(plan.runs) <= TOKEN_MAP_BUDGET else "mean"
        if token_heads == "mean":
            pooled = {n: t.mean(0, keepdim=True) if n.startswith(TILED_MAPS) else t for n, t in pooled.items()}
        maps.update(pooled)
        videos[f"p{p}.s{seed}"] = writable(result.video)
        if result.grid is not None:
            grid, text_tokens = result.grid, result.text_tokens
    labels: dict[int, list[str]] = {}
    for (p, _), result in zip(plan.runs, results, strict=True):
        labels.setdefault(p, result.labels)
    layout = {"grid": list(grid) if grid else None, "text_tokens": text_tokens, "text_position": text_position}
    stats = pd.concat(tables, ignore_index=True)
    backends = sorted({name for result in results for name in result.backends})
    return Gathered(stats, maps, videos, notes, layout, labels, token_heads, backends)


def run_record(
    request: AnalyzeRequest,
    plan: AnalysisPlan,
    facts: ModelFacts,
    gathered: Gathered,
    similarity: pd.DataFrame,
    elapsed: float,
    executor: str,
) -> dict[str, Any]:
    """run.json: what was run, on what, how, and the run's mean map similarity per axis."""
    stats, notes = gathered.stats, gathered.notes
    generation = recorded_generation(plan.generation, len(next(iter(gathered.videos.values()))), notes)
    return {
        "model": str(plan.model_dir),
        "family": facts.family,
        "trained": plan.settings.get("trained"),
        "layers": facts.layers,
        "captured_layers": sorted(set(stats["layer"].tolist())) if len(stats) else [],
        "heads": int(stats["head"].max()) + 1 if len(stats) else 0,
        "layout": gathered.layout,
        "prompts": plan.prompts,
        "text_token_labels": {str(i): tokens for i, tokens in gathered.labels.items()},
        "seeds": [int(s) for s in request.seeds],
        "steps": plan.total_steps,
        "captured_steps": sorted(set(stats["step"].tolist())) if len(stats) else [],
        "generation": generation,
        "device": facts.device,
        "dtype": request.dtype,
        "placement": {
            "offload": request.offload,
            "compile": request.compile,
            "context_parallel": request.context_parallel,
        },
        "top_mass": request.top_mass,
        "statistics_backend": gathered.backends,
        "map_tiles": request.map_tiles,
        "map_steps": plan.map_steps,
        "token_map_heads": gathered.token_heads,
        "plan": str(request.plan) if request.plan is not None else None,
        "plan_edits": [edit.to_dict() for edit in plan.edits],
        "similarity": {
            axis: float(similarity[similarity["axis"] == axis]["mean_similarity"].mean())
            for axis in sorted(set(similarity["axis"]))
        },
        "seconds": round(elapsed, 2),
        "executor": executor,
        "notes": notes,
        "versions": library_versions(),
    }


def write_run(
    output: OutputDir, run: dict[str, Any], gathered: Gathered, structure: Structure, similarity: pd.DataFrame
) -> None:
    """The run directory's files, staged and moved into place together (store/output.py)."""
    with output.staging() as staging:
        write_json(staging / "run.json", run)
        write_table(staging / "stats.parquet", gathered.stats)
        write_tensors(staging / "maps.safetensors", gathered.maps, metadata={"vditscope": run["versions"]["vditscope"]})
        write_tensors(staging / "videos.safetensors", {k: torch.from_numpy(v) for k, v in gathered.videos.items()})
        write_table(staging / "similarity.parquet", similarity)
        write_table(staging / "heads.parquet", structure.heads)
        write_table(staging / "text_attention.parquet", structure.text)
        write_table(staging / "head_sinks.parquet", structure.sinks)
        write_report(staging / "report.html", run, gathered.stats, gathered.maps, gathered.videos, structure)
