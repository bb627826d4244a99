"""`vditscope sinks`: find the attention sinks of a video pipeline or a language model, say where they
sit and how consistent they are, measure what removing them does, and compare the two kinds.

A video pipeline generates each prompt under ``sink_capture`` (per-key statistics of every
self-attention call); a transformers text model runs one forward pass per text. Both give the
same tables; the report puts a video model and a language model (``lm``) side by side.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..capture.sink_ablation import PATHS, SELECTIONS, ablate_sinks
from ..capture.sink_capture import sink_capture
from ..errors import VditscopeError
from ..store import OutputDir, library_versions, write_json, write_table
from ..tiny import DEFAULT_MODEL
from . import quality
from .captured import token_labels
from .generation import generate
from .loaded import LoadedPipeline
from .options import GenerationOptions, checked_layers, checked_prompts_and_seeds, checked_steps
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
from .text_model import DEFAULT_TEXT, TextModel, is_text_model_dir, load_text_model, text_ablation, text_key_stats

ProgressFn = Callable[[str, int, int], None]
# what `vditscope sinks` writes at the top of its run directory (lm_* with --lm)
SINKS_FILES = (
    "run.json", "report.html", "sink_calls.parquet", "sinks.parquet", "sink_layers.parquet", "sink_where.parquet",
    "sink_consistency.parquet", "sink_ablation.parquet", "lm_sink*.parquet",
)  # fmt: skip


@dataclass
class SinksRequest(GenerationOptions):
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
def video_sinks(request: SinksRequest, progress: ProgressFn | None = None) -> SinkResult:
    """Generate each prompt and seed under sink capture; tables, then the ablation on the first one."""

    loaded = LoadedPipeline.load(request)
    pipe, adapter, device = loaded.pipe, loaded.adapter, loaded.device
    prompts = loaded.prompts(request.prompts)
    generation = loaded.generation(request)
    num_layers = loaded.self_layers
    layers = checked_layers(request.layers, num_layers)
    checked_layers(request.ablation_layers, num_layers, "ablation layer")
    checked_steps(request.capture_steps, int(generation.get("num_inference_steps", 0)) or None)
    total = len(prompts) * len(request.seeds)
    dense: dict[str, Any] = {}
    with sink_capture(
        pipe, layers, request.capture_steps, top_keys=request.top_keys, chunk_size=request.chunk_size
    ) as session:
        for p, prompt in enumerate(prompts):
            for s, seed in enumerate(request.seeds):
                if progress:
                    progress(f"sinks: prompt {p + 1}, seed {seed}", p * len(request.seeds) + s, total)
                frames, latents = generate(pipe, prompt, seed, generation, device)
                if not dense:
                    dense = {"frames": frames, "latents": latents}
    if not session.totals:
        raise VditscopeError("no self-attention call was observed (check --capture-steps against the schedule)")
    heads = int(next(iter(session.totals.values())).received.shape[0])
    num_keys = int(next(iter(session.totals.values())).received.shape[1])
    layout = adapter.layout(session.grid, num_keys) if session.grid else None
    special = set(getattr(getattr(pipe, "tokenizer", None), "all_special_tokens", []) or [])
    tokens = token_labels(pipe, prompts[0], layout.num_text) if layout is not None and layout.text else []
    labels = video_labels(layout, num_keys, tokens, special)
    keys = pd.concat(
        [
            key_table(totals.mean(), layer, labels, keep=request.top_keys, threshold=request.threshold)
            for layer, totals in sorted(session.totals.items())
        ],
        ignore_index=True,
    )
    summary = layer_summary(keys, heads)
    calls = session.calls_table()
    calls["sink"] = calls["ratio"] >= request.threshold
    overlap = consistency(calls, request.threshold)
    summary = summary.merge(overlap, on="layer", how="left")
    ablation = pd.DataFrame()
    if request.ablation:
        ablation = _video_ablation(pipe, request, prompts[0], generation, device, dense, summary, num_layers, progress)
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
    return SinkResult(
        "video", str(loaded.model_dir), adapter.family, keys, summary, where_table(keys), overlap, ablation, info
    )


def _video_ablation(
    pipe: Any,
    request: SinksRequest,
    prompt: str,
    generation: dict[str, Any],
    device: str,
    dense: dict[str, Any],
    summary: pd.DataFrame,
    num_layers: int,
    progress: ProgressFn | None,
) -> pd.DataFrame:
    """Sinks and as many random keys, masked or value-zeroed, in the ablation layers: quality
    against the unchanged generation of the first prompt and seed."""
    layers = _ablation_layers(request, summary, num_layers)
    if not layers:
        return pd.DataFrame()
    seed = int(request.seeds[0])
    rows = []
    variants = [(path, selection) for path in PATHS for selection in SELECTIONS]
    for i, (path, selection) in enumerate(variants):
        if progress:
            progress(f"ablation: {path}, {selection}", i, len(variants))
        with ablate_sinks(
            pipe, layers, path=path, selection=selection, threshold=request.threshold, seed=seed,
            chunk_size=request.chunk_size,
        ) as session:  # fmt: skip
            frames, latents = generate(pipe, prompt, seed, generation, device)
        removed = session.ablation_table()
        rows.append(
            {
                "path": path,
                "keys": selection,
                "layers": ",".join(map(str, layers)),
                "prompt": prompt,
                "seed": seed,
                "psnr": quality.psnr(frames, dense["frames"]),
                "ssim": quality.ssim(frames, dense["frames"]),
                "latent_mse": quality.latent_mse(latents, dense["latents"]),
                "keys_per_head": float(removed["keys"].mean()) if len(removed) else 0.0,
                "mass_removed": float(removed["mass"].mean()) if len(removed) else 0.0,
            }
        )
    return pd.DataFrame(rows)


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
    other tables, run.json and report.html."""
    validate(request)
    started = time.perf_counter()
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
        return _run_sinks(request, output, kind, directory, lm_directory, started, progress)


def _run_sinks(
    request: SinksRequest,
    output: OutputDir,
    kind: str,
    directory: Path,
    lm_directory: Path | None,
    started: float,
    progress: ProgressFn | None,
) -> Path:
    from ..report.sinks_html import write_sinks_report

    if kind == "video":
        primary = video_sinks(request, progress)
    else:
        primary = text_sinks(directory, request.prompts, request, progress)
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
