"""`vditscope sinks`: find the attention sinks of a video pipeline or a language model, say where they
sit and how consistent they are, measure what removing them does, and compare the two kinds.

A video pipeline generates each prompt under ``sink_capture`` (per-key statistics of every
self-attention call); a transformers text model runs one forward pass per text. Both give the
same tables; the report puts a video model and a language model (``lm``) side by side.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..adapters.settings import default_prompts, model_settings
from ..adapters.text_models import TextModel, is_text_model_dir, load_text_model
from ..capture.sink_ablation import PATHS, SELECTIONS, ablate_sinks
from ..capture.sink_capture import sink_capture
from ..capture.sink_sets import SinkSets, record_sink_sets
from ..errors import VditscopeError
from ..executors import (
    Executor,
    Job,
    JobPlan,
    ModelSpec,
    Pool,
    Workbench,
    checked_model_dir,
    executor_for,
    run_jobs,
)
from ..progress import ProgressFn
from ..store import OutputDir, files_of, library_versions, write_json, write_table
from ..tiny import DEFAULT_MODEL
from . import quality
from .captured import token_labels
from .memory_plan import check_generation
from .options import ExecutorOptions, checked_layers, checked_prompts_and_seeds, checked_steps
from .results import SinkResult
from .sink_tables import (
    SINK_THRESHOLD,
    consistency,
    key_table,
    layer_summary,
    text_labels,
    video_labels,
    where_table,
)
from .text_model import DEFAULT_TEXT, text_ablation, text_key_stats

# what `vditscope sinks` writes at the top of its run directory (lm_* with --lm)
SINKS_FILES = files_of("sinks")


@dataclass
class SinksRequest(ExecutorOptions):
    """What to study; None fields take the model's defaults."""

    prompts: Sequence[str] = ()  # video prompts, or texts for a text model
    seeds: Sequence[int] = (0,)
    out: Path = Path("runs/sinks")
    layers: Sequence[int] | None = None
    capture_steps: Sequence[int] | None = None
    top_keys: int = 16  # per head: per call, and in sinks.parquet for video models
    threshold: float = SINK_THRESHOLD
    ablation: bool = True
    ablation_layers: Sequence[int] | None = None  # None: the layers where sinks were found
    lm: str | None = None  # a text model directory to compare with
    lm_texts: Sequence[str] = ()
    max_tokens: int = 512
    chunk_size: int | None = None


def validate(request: SinksRequest) -> None:
    """Raise VditscopeError for bad settings before anything is loaded or written."""
    if request.top_keys < 1:
        raise VditscopeError(f"--top-keys must be positive, got {request.top_keys}")
    if not request.threshold > 1:
        raise VditscopeError(f"--threshold is a ratio to the median key and must be > 1, got {request.threshold}")
    if request.max_tokens < 1:
        raise VditscopeError(f"--max-tokens must be positive, got {request.max_tokens}")
    checked_prompts_and_seeds(request.prompts, request.seeds)
    checked_prompts_and_seeds(request.lm_texts, request.seeds)


def model_kind(model: str | None) -> tuple[str, Path]:
    """("video" | "text", directory) of a model argument (path, cached id or shipped name)."""
    from ..adapters.loading import resolve_model_dir

    directory = resolve_model_dir(model if model is not None else DEFAULT_MODEL)
    if (directory / "model_index.json").is_file():
        return "video", directory
    if is_text_model_dir(directory):
        return "text", directory
    raise VditscopeError(
        f"{directory} is neither a diffusers pipeline (model_index.json) nor a transformers model (config.json)"
    )


def _ablation_layers(request: SinksRequest, summary: pd.DataFrame, num_layers: int) -> list[int]:
    chosen = checked_layers(request.ablation_layers, num_layers, "ablation layer")
    if chosen is not None:
        return sorted(chosen)
    return sorted(int(row.layer) for row in summary.itertuples() if row.sink_heads > 0)


# -- video pipelines ------------------------------------------------------------------------------
@dataclass(frozen=True)
class SinkJob:
    """One generation under sink capture: its top-key call table (``generation`` renumbered by the driver),
    the per-layer key totals of its conditional calls, the token layout and labels, and for the first
    generation its frames and latents (the ablation's reference)."""

    prompt: str
    seed: int
    generation: dict[str, Any]
    layers: frozenset[int] | None
    capture_steps: tuple[int, ...] | None
    top_keys: int
    chunk_size: int | None
    label_prompt: str  # the prompt whose tokens label the keys (the first)
    keep_video: bool = False

    def __call__(self, bench: Workbench) -> dict[str, Any]:
        pipe = bench.pipe
        with sink_capture(
            pipe, self.layers, self.capture_steps, top_keys=self.top_keys, chunk_size=self.chunk_size
        ) as session:
            frames, latents = bench.generate(self.prompt, self.seed, self.generation)
        result: dict[str, Any] = {"calls": session.calls_table(), "totals": session.totals, "layout": None}
        if session.totals:
            num_keys = int(next(iter(session.totals.values())).received.shape[1])
            layout = bench.adapter.layout(session.grid, num_keys) if session.grid else None
            result["layout"] = layout
            result["special"] = set(getattr(getattr(pipe, "tokenizer", None), "all_special_tokens", []) or [])
            labelled = layout is not None and layout.text
            result["tokens"] = token_labels(pipe, self.label_prompt, layout.num_text) if labelled else []
        if self.keep_video:
            result["dense"] = {"frames": frames, "latents": latents}
        return result


@dataclass
class SinkRuns:
    """The generations of a video sink study merged in order, as one capture session would have left them."""

    totals: dict[int, Any]  # layer -> key totals (sums and counts over the conditional calls)
    calls: pd.DataFrame
    last: dict[str, Any]  # the last generation's result (layout and labels, as the session ended)
    dense: dict[str, Any]


def merge_sink_runs(results: list[dict[str, Any]]) -> SinkRuns:
    """Sum the key totals per layer (a layer whose key count changes starts again, as in a session) and
    stack the call tables with each generation's index."""
    totals: dict[int, Any] = {}
    for result in results:
        for layer, part in result["totals"].items():
            merged = totals.get(layer)
            if merged is None or merged.received.shape != part.received.shape:
                totals[layer] = copy.deepcopy(part)
                continue
            for name in ("received", "visible", "key_norm", "value_norm"):
                getattr(merged, name).add_(getattr(part, name))
            merged.calls += part.calls
            merged.num_queries = part.num_queries
    tables = [result["calls"].assign(generation=index) for index, result in enumerate(results)]
    return SinkRuns(totals, pd.concat(tables, ignore_index=True), results[-1], results[0].get("dense", {}))


def sink_jobs(request: SinksRequest, prompts: list[str], generation: dict[str, Any], layers: set[int] | None) -> list:
    """One job per prompt and seed, in the order a single session would have generated them."""
    steps = tuple(request.capture_steps) if request.capture_steps is not None else None
    chosen = frozenset(layers) if layers is not None else None
    jobs = []
    for p, prompt in enumerate(prompts):
        for s, seed in enumerate(request.seeds):
            task = SinkJob(prompt, int(seed), generation, chosen, steps, request.top_keys, request.chunk_size,
                           prompts[0], keep_video=p == 0 and s == 0)  # fmt: skip
            jobs.append(Job(f"p{p}.s{seed}", task, label=f"prompt {p + 1}, seed {seed}"))
    return jobs


def video_sinks(
    request: SinksRequest, progress: ProgressFn | None = None, executor: Executor | None = None
) -> SinkResult:
    """Generate each prompt and seed under sink capture, as jobs on ``executor`` (default: the one
    ``request.executor`` names); tables, then the ablation on the first generation."""
    executor = executor or executor_for(request.executor, request.address)
    model = request.model if request.model is not None else DEFAULT_MODEL
    model_dir = checked_model_dir(model)
    settings = model_settings(model_dir)
    prompts = list(request.prompts) or default_prompts(settings)
    generation = request.generation_kwargs(settings)
    checked_steps(request.capture_steps, int(generation.get("num_inference_steps", 0)) or None)
    check_generation(model_dir, generation, request.device, request.dtype, chunk_size=request.chunk_size,
                     executor=executor.name, offload=request.offload)  # fmt: skip
    with executor.start(ModelSpec.of(model, request)) as pool:
        num_layers, family = pool.facts.self_layers, pool.facts.family
        layers = checked_layers(request.layers, num_layers)
        checked_layers(request.ablation_layers, num_layers, "ablation layer")
        jobs = sink_jobs(request, prompts, generation, layers)
        runs = merge_sink_runs(run_jobs(pool, JobPlan(jobs, noun="generations"), progress).results)
        if not runs.totals:
            raise VditscopeError("no self-attention call was observed (check --capture-steps against the schedule)")
        heads = int(next(iter(runs.totals.values())).received.shape[0])
        num_keys = int(next(iter(runs.totals.values())).received.shape[1])
        layout = runs.last["layout"]
        labels = video_labels(layout, num_keys, runs.last["tokens"], runs.last["special"])
        keys = pd.concat(
            [
                key_table(totals.mean(), layer, labels, keep=request.top_keys, threshold=request.threshold)
                for layer, totals in sorted(runs.totals.items())
            ],
            ignore_index=True,
        )
        summary = layer_summary(keys, heads)
        calls = runs.calls
        calls["sink"] = calls["ratio"] >= request.threshold
        overlap = consistency(calls, request.threshold)
        summary = summary.merge(overlap, on="layer", how="left")
        ablation = pd.DataFrame()
        if request.ablation:
            reference = AblationReference(prompts[0], int(request.seeds[0]), generation, pool.share(runs.dense))
            ablation = _video_ablation(pool, request, reference, _ablation_layers(request, summary, num_layers),
                                       progress)  # fmt: skip
    info = {
        "prompts": prompts,
        "seeds": list(request.seeds),
        "generation": generation,
        "layers": num_layers,
        "heads": heads,
        "tokens": num_keys,
        "layout": None if layout is None else {"grid": list(layout.grid), "text": layout.text},
        "calls": calls,
    }
    return SinkResult("video", str(model_dir), family, keys, summary, where_table(keys), overlap, ablation, info)


@dataclass(frozen=True)
class AblationReference:
    """The generation the ablations are scored against: its prompt, seed, settings and shared frames."""

    prompt: str
    seed: int
    generation: dict[str, Any]
    dense: Any  # a handle from Pool.share of {"frames", "latents"}


@dataclass(frozen=True)
class SinkSetJob:
    """The reference generation once more, unchanged, recording the sinks of every call and head of the
    ablation layers: the keys every ablation hides, and the count its random control matches."""

    layers: tuple[int, ...]
    threshold: float
    chunk_size: int | None
    prompt: str
    seed: int
    generation: dict[str, Any]

    def __call__(self, bench: Workbench) -> SinkSets:
        with record_sink_sets(bench.pipe, self.layers, threshold=self.threshold, chunk_size=self.chunk_size) as rec:
            bench.generate(self.prompt, self.seed, self.generation)
        return rec.sets


@dataclass(frozen=True)
class SinkAblationJob:
    """The ``reference`` generation with its recorded sinks (or as many random keys of the same calls and
    heads) masked or value-zeroed in its layers: one row of quality against the unchanged generation (its
    inputs: the reference frames and the recorded sink sets)."""

    path: str
    selection: str
    reference: SinkSetJob  # the generation, the layers and the sink rule

    def __call__(self, bench: Workbench, dense: dict[str, Any], sink_sets: SinkSets) -> dict[str, Any]:
        ref = self.reference
        with ablate_sinks(
            bench.pipe, list(ref.layers), path=self.path, selection=self.selection, threshold=ref.threshold,
            seed=ref.seed, chunk_size=ref.chunk_size, sink_sets=sink_sets,
        ) as session:  # fmt: skip
            frames, latents = bench.generate(ref.prompt, ref.seed, ref.generation)
        removed = session.ablation_table()
        return {
            "path": self.path,
            "keys": self.selection,
            "layers": ",".join(map(str, ref.layers)),
            "prompt": ref.prompt,
            "seed": ref.seed,
            "psnr": quality.psnr(frames, dense["frames"]),
            "ssim": quality.ssim(frames, dense["frames"]),
            "latent_mse": quality.latent_mse(latents, dense["latents"]),
            "keys_per_head": float(removed["keys"].mean()) if len(removed) else 0.0,
            "mass_removed": float(removed["mass"].mean()) if len(removed) else 0.0,
        }


def _video_ablation(
    pool: Pool, request: SinksRequest, reference: AblationReference, layers: list[int], progress: ProgressFn | None
) -> pd.DataFrame:
    """The dense run's sinks and as many random keys (same calls and heads), masked or value-zeroed, in the
    ablation layers: quality against the unchanged generation of the first prompt and seed, one job per
    variant after one that records the sink sets."""
    if not layers:
        return pd.DataFrame()
    ref = reference
    record = SinkSetJob(tuple(layers), request.threshold, request.chunk_size, ref.prompt, ref.seed, ref.generation)
    sets = Job("sink-sets", record, label="sink sets of the unchanged generation")
    jobs = []
    for path in PATHS:
        for selection in SELECTIONS:
            task = SinkAblationJob(path, selection, record)
            jobs.append(Job(f"{path}.{selection}", task, inputs=(ref.dense,), needs=("sink-sets",),
                            label=f"{path}, {selection}"))  # fmt: skip
    return pd.DataFrame(run_jobs(pool, JobPlan(jobs, inputs={sets.key: sets}, noun="ablations"), progress).results)


# -- language models ---------------------------------------------------------------------------------
def text_sinks(
    directory: Path, texts: Sequence[str], request: SinksRequest, progress: ProgressFn | None = None
) -> SinkResult:
    """One forward pass per text: every key of every layer and head for the first text; sink-set
    overlap across texts; the ablation's loss change."""
    from ..adapters.loading import resolve_device

    text_model = load_text_model(directory, device=resolve_device(request.device), dtype=request.dtype)
    texts = list(texts) or [DEFAULT_TEXT]
    layers = checked_layers(request.layers, text_model.num_layers)
    checked_layers(request.ablation_layers, text_model.num_layers, "ablation layer")
    special = text_model.special_tokens()
    keys = pd.DataFrame()
    call_rows = []
    for t, text in enumerate(texts):
        if progress:
            progress(f"sinks: text {t + 1}", t, len(texts))
        per_layer, tokens = text_key_stats(
            text_model, text, max_tokens=request.max_tokens, chunk_size=request.chunk_size
        )
        labels = text_labels(tokens, special)
        tables = [
            key_table(stats, layer, labels, keep=None, threshold=request.threshold)
            for layer, stats in enumerate(per_layer)
            if layers is None or layer in layers
        ]
        table = pd.concat(tables, ignore_index=True)
        if t == 0:
            keys = table
            heads = int(per_layer[0].received.shape[1])
            num_tokens = len(tokens)
        call_rows.append(table.assign(generation=t, step=0, branch="cond", sample=0)[
            ["generation", "step", "branch", "sample", "layer", "head", "token_index", "ratio"]
        ])  # fmt: skip
    overlap = consistency(pd.concat(call_rows, ignore_index=True), request.threshold)
    summary = layer_summary(keys, heads).merge(overlap, on="layer", how="left")
    ablation = pd.DataFrame()
    if request.ablation:
        ablation = _text_ablation(text_model, texts[0], request, summary, progress)
    info = {"texts": texts, "layers": text_model.num_layers, "heads": heads, "tokens": num_tokens,
            "causal": text_model.causal}  # fmt: skip
    family = str(getattr(text_model.model.config, "model_type", "text"))
    return SinkResult("text", str(directory), family, keys, summary, where_table(keys), overlap, ablation, info)


def _text_ablation(
    text_model: TextModel, text: str, request: SinksRequest, summary: pd.DataFrame, progress: ProgressFn | None
) -> pd.DataFrame:
    layers = _ablation_layers(request, summary, text_model.num_layers)
    if not layers:
        return pd.DataFrame()
    rows = []
    for path in PATHS:
        for selection in SELECTIONS:
            result = text_ablation(
                text_model, text, set(layers), path=path, selection=selection, threshold=request.threshold,
                max_tokens=request.max_tokens,
            )  # fmt: skip
            rows.append({"path": path, "keys": selection, "layers": ",".join(map(str, layers)), **result})
    return pd.DataFrame(rows)


# -- the command -----------------------------------------------------------------------------------
def run_sinks(request: SinksRequest, progress: ProgressFn | None = None) -> Path:
    """Study the model (and ``lm``), then write the run directory atomically: sinks.parquet and the
    other tables, run.json and report.html. A video pipeline's generations run on ``request.executor``;
    a text model's forward passes (short) run in this process."""
    validate(request)
    started = time.perf_counter()
    executor = executor_for(request.executor, request.address)
    kind, directory = model_kind(request.model)
    lm_directory = None
    if request.lm is not None:
        lm_kind, lm_directory = model_kind(request.lm)
        if lm_kind != "text":
            raise VditscopeError(f"--lm must be a transformers text model directory; {lm_directory} is a pipeline")
    output = OutputDir(
        request.out, "sinks", files=SINKS_FILES, inputs=[directory, lm_directory], overwrite=request.overwrite
    )
    with output:
        return _run_sinks(request, output, SinkModels(kind, directory, lm_directory, executor), started, progress)


@dataclass
class SinkModels:
    """What a sinks run studies: the model (video pipeline or text model), the text model beside it, and
    the executor of the video pipeline's generations."""

    kind: str
    directory: Path
    lm_directory: Path | None
    executor: Executor


def _run_sinks(
    request: SinksRequest, output: OutputDir, models: SinkModels, started: float, progress: ProgressFn | None
) -> Path:
    from ..report.sinks_html import write_sinks_report

    if models.kind == "video":
        primary = video_sinks(request, progress, models.executor)
    else:
        primary = text_sinks(models.directory, request.prompts, request, progress)
    lm_directory = models.lm_directory
    lm = text_sinks(lm_directory, request.lm_texts, request, progress) if lm_directory is not None else None
    calls = primary.info.pop("calls", None)
    run = {
        "model": primary.model,
        "kind": primary.kind,
        "family": primary.family,
        "threshold": request.threshold,
        "top_keys": request.top_keys,
        **primary.info,
        "lm": None if lm is None else {"model": lm.model, "family": lm.family, **lm.info},
        "seconds": round(time.perf_counter() - started, 2),
        "executor": models.executor.name if models.kind == "video" else "local",
        "versions": library_versions(),
    }
    with output.staging() as staging:
        write_json(staging / "run.json", run)
        _write_result(staging, "", primary)
        if calls is not None:
            write_table(staging / "sink_calls.parquet", calls)
        if lm is not None:
            _write_result(staging, "lm_", lm)
        write_sinks_report(staging / "report.html", run, primary, lm, calls)
    return output.path


def _write_result(directory: Path, prefix: str, result: SinkResult) -> None:
    write_table(directory / f"{prefix}sinks.parquet", result.keys)
    write_table(directory / f"{prefix}sink_layers.parquet", result.layers)
    write_table(directory / f"{prefix}sink_where.parquet", result.where)
    write_table(directory / f"{prefix}sink_consistency.parquet", result.consistency)
    if not result.ablation.empty:
        write_table(directory / f"{prefix}sink_ablation.parquet", result.ablation)
