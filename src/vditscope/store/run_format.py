"""What each command's output directory holds, declared as data: the one source of truth that the output
policy (``OutputDir``), the reader (``open_run``) and the writer (``RunWriter``) share.

A command's format lists its files in the order the command declares them. Each file has a kind (how it is
read and written), whether every finished run holds it, one line on what it holds and, for the contract
tables and tensor files (DESIGN.md, "Product contract"), the columns or tensor names that must be there.
``claim`` is the name or glob the command claims in its output (``OutputDir(files=...)``); several declared
files may share one claim (``study*``, an export's ``*``).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Literal

Kind = Literal["json", "table", "csv", "tensors", "video", "figure", "html", "text", "folder", "partial", "other"]
KINDS: dict[str, str] = {
    "json": "a JSON document",
    "table": "a parquet table (pandas)",
    "csv": "a CSV copy of a table, for spreadsheets",
    "tensors": "named tensors in safetensors (never pickle)",
    "video": "an encoded video (mp4) or an animated preview (gif)",
    "figure": "an image (png)",
    "html": "a self-contained HTML page",
    "text": "plain text",
    "folder": "a folder of further files",
    "partial": "a half-written file of an interrupted step (replaced on resume, never read)",
    "other": "a file in a library's own format (diffusers, transformers); vditscope does not read it",
}


@dataclass(frozen=True)
class FileSpec:
    """One declared file (or glob) of a run directory."""

    name: str
    kind: Kind
    holds: str
    always: bool = True  # every finished run of the command holds it (a glob: at least one match)
    claim: str = ""  # the glob the command claims for it in OutputDir(files=...); "" means ``name``
    columns: tuple[str, ...] = ()  # tables: the columns every run has (the contract)
    tensors: tuple[str, ...] = ()  # tensors: the tensor names every run has (the contract)
    stage: str = ""  # "" for the command itself; a later stage that adds it to the same output ("study")

    @property
    def glob(self) -> str:
        """The name or glob the command claims for this file."""
        return self.claim or self.name

    def matches(self, name: str) -> bool:
        """Whether a top-level entry ``name`` is this declared file (exact name, or the glob)."""
        return name == self.name or ("/" not in name and fnmatch.fnmatchcase(name, self.name))


FIGURES = FileSpec(
    "figures",
    "folder",
    "every figure of the report as NAME.png and NAME.svg (for papers and slides)",
    always=False,  # runs of earlier releases have none; `vditscope report RUN` writes it
)


@dataclass(frozen=True)
class RunFormat:
    """What one command's output directory holds."""

    command: str
    summary: str
    files: tuple[FileSpec, ...]
    info: str | None = None  # the JSON file that describes the run (run.json, sweep.json, metrics.json, ...)
    main_fields: tuple[str, ...] = ()  # the info's fields a summary shows first
    main_table: str | None = None  # the table a reader gets first (``Run.table()`` with no name)
    resumable: bool = False  # written as it goes (rerun to resume) instead of all at once
    info_match: tuple[str, str] | None = None  # (info field, value) that tells this format from a twin
    recognized: bool = False  # an unmarked folder with these files is taken as such a run (earlier releases)

    def spec(self, name: str) -> FileSpec | None:
        """The declaration of top-level entry ``name``: an exact name first, then the first matching glob."""
        for spec in self.files:
            if spec.name == name:
                return spec
        return next((spec for spec in self.files if spec.matches(name)), None)

    @property
    def always(self) -> tuple[FileSpec, ...]:
        """The files every finished run holds."""
        return tuple(spec for spec in self.files if spec.always)


# ---- the contract's columns and tensors (DESIGN.md) -----------------------------------------------------
STATS_COLUMNS = ("prompt", "seed", "step", "branch", "layer", "head", "entropy", "text_mass", "sink_ratio")
SWEEP_COLUMNS = ("layers", "k", "temperature", "prompt", "seed", "psnr", "ssim", "mass_dropped")
SINKS_COLUMNS = ("layer", "head", "token_index", "token", "received", "ratio")
EDIT_TENSORS = ("source", "target", "edited")
COMPARE_COLUMNS = ("layer_a", "layer_b", "pairs", "similarity", "within_a", "map")

_ANALYZE = RunFormat(
    "analyze",
    "attention statistics, pooled maps and videos of generations on one model, and their report",
    (
        FileSpec(
            "run.json",
            "json",
            "model, family, layers, heads, layout, prompts, seeds, steps, settings, statistics_backend, "
            "placement (offload, compile, context_parallel), versions, "
            "memory (the estimate per part, what was free, the chunk, the measured peak)",
        ),
        FileSpec(
            "stats.parquet",
            "table",
            "one row per prompt, seed, step, branch, layer and head: the capture table's statistics",
            columns=STATS_COLUMNS,
        ),
        FileSpec("maps.safetensors", "tensors", "pooled maps per generation and layer (store/map_names.py)"),
        FileSpec("videos.safetensors", "tensors", "the generated videos, frames x height x width x 3 in [0, 1]"),
        FileSpec("similarity.parquet", "table", "per layer: how alike the maps are across prompts, seeds and steps"),
        FileSpec("heads.parquet", "table", "per layer and head: locality and the spatial/temporal/sink class"),
        FileSpec("text_attention.parquet", "table", "per layer and text token: the mass video queries put on it"),
        FileSpec("head_sinks.parquet", "table", "per layer and head: the sink key, its ratio and consistency"),
        FileSpec("report.html", "html", "the self-contained report"),
        FIGURES,
    ),
    info="run.json",
    main_fields=("model", "family", "prompts", "seeds", "steps", "layers", "heads"),
    main_table="stats.parquet",
    recognized=True,
)


def _sweep(mode: str) -> RunFormat:
    return RunFormat(
        f"sweep {mode}",
        f"a resumable {mode} sweep: quality against the dense generation, one row per cell",
        (
            FileSpec("cells", "folder", "one JSON per finished cell (what a rerun reuses)"),
            FileSpec("dense", "folder", "the dense generations the cells are measured against (safetensors)"),
            FileSpec("sweep.parquet", "table", "one row per cell: the sweep table", columns=SWEEP_COLUMNS),
            FileSpec("sweep.csv", "csv", "sweep.parquet as CSV"),
            FileSpec(
                "plan.json",
                "json",
                "the layer-wise sparsity plan that meets the PSNR target (sparsity sweeps with a plan)",
                always=False,
            ),
            FileSpec("sweep.json", "json", "model, mode, scope, method, levels, prompts, seeds, generation, cells"),
            FileSpec("report.html", "html", "the self-contained sweep report"),
            FIGURES,
        ),
        info="sweep.json",
        main_fields=("model", "family", "mode", "scope", "method", "levels", "cells"),
        main_table="sweep.parquet",
        resumable=True,
        info_match=("mode", mode),
        recognized=True,
    )


_EDIT = RunFormat(
    "edit",
    "an attention transfer edit: source, plain target and edited videos with their quality",
    (
        FileSpec("source.mp4", "video", "the source prompt's video"),
        FileSpec("target.mp4", "video", "the target prompt's video without transfer"),
        FileSpec("edited.mp4", "video", "the target prompt's video with the source's attention"),
        FileSpec("preview.gif", "video", "source, target and edited side by side"),
        FileSpec(
            "frames.safetensors", "tensors", "raw frames (frames x height x width x 3, [0, 1])", tensors=EDIT_TENSORS
        ),
        FileSpec("metrics.json", "json", "prompts, seed, mode, layers, steps, SSIM and PSNR between the three videos"),
    ),
    info="metrics.json",
    main_fields=("source_prompt", "target_prompt", "model", "mode", "layers", "edited_vs_source"),
    recognized=True,
)
_EDIT_SWEEP = RunFormat(
    "edit-sweep",
    "attention transfer one layer at a time: how much each layer carries the source's layout",
    (
        FileSpec("edit_sweep.parquet", "table", "one row per transferred layer: quality against source and target"),
        FileSpec("edit_sweep.csv", "csv", "edit_sweep.parquet as CSV"),
        FileSpec("edit_sweep.png", "figure", "the per-layer bars"),
        FileSpec(
            "run.json",
            "json",
            "model, prompts, seed, mode, window, steps: what `vditscope report` needs (earlier releases lack it)",
            always=False,
        ),
        FileSpec("report.html", "html", "the self-contained report"),
        FIGURES,
    ),
    info="run.json",
    main_table="edit_sweep.parquet",
)
_GENERATE = RunFormat(
    "generate",
    "one generation, dense and (with --plan) with the sparsity plan applied",
    (
        FileSpec("frames.safetensors", "tensors", "raw frames: dense, and planned with a plan", tensors=("dense",)),
        FileSpec("preview.gif", "video", "the videos side by side"),
        FileSpec(
            "metrics.json",
            "json",
            "prompt, seed, model, plan, the plan's PSNR, SSIM and sparsity, and seconds: dense, planned "
            "(FlexAttention's compilation apart), compile, speedup",
        ),
    ),
    info="metrics.json",
    main_fields=("prompt", "seed", "model", "plan", "psnr", "ssim", "sparsity"),
    recognized=True,
)
_SINKS = RunFormat(
    "sinks",
    "attention sinks of a video pipeline or a text model (and, with --lm, of a language model beside it)",
    (
        FileSpec("run.json", "json", "model, kind, family, threshold, top keys, settings, versions"),
        FileSpec("report.html", "html", "the self-contained report"),
        FIGURES,
        FileSpec("sink_calls.parquet", "table", "per attention call: its sink keys (video models)", always=False),
        FileSpec(
            "sinks.parquet",
            "table",
            "per layer, head and key token: received mass and ratio to the median",
            columns=SINKS_COLUMNS,
        ),
        FileSpec("sink_layers.parquet", "table", "per layer: sink heads and the largest ratio"),
        FileSpec("sink_where.parquet", "table", "where the sinks sit (token kind, frame, place)"),
        FileSpec("sink_consistency.parquet", "table", "per layer: sink overlap across steps and prompts"),
        FileSpec(
            "sink_ablation.parquet", "table", "quality with sinks removed against as many random keys", always=False
        ),
        FileSpec(
            "lm_sinks.parquet",
            "table",
            "sinks.parquet of the language model (--lm)",
            always=False,
            claim="lm_sink*.parquet",
            columns=SINKS_COLUMNS,
        ),
        FileSpec(
            "lm_sink_layers.parquet",
            "table",
            "sink_layers.parquet of the language model",
            always=False,
            claim="lm_sink*.parquet",
        ),
        FileSpec(
            "lm_sink_where.parquet",
            "table",
            "sink_where.parquet of the language model",
            always=False,
            claim="lm_sink*.parquet",
        ),
        FileSpec(
            "lm_sink_consistency.parquet",
            "table",
            "sink_consistency.parquet of the language model",
            always=False,
            claim="lm_sink*.parquet",
        ),
        FileSpec(
            "lm_sink_ablation.parquet",
            "table",
            "sink_ablation.parquet of the language model",
            always=False,
            claim="lm_sink*.parquet",
        ),
    ),
    info="run.json",
    main_fields=("model", "kind", "family", "threshold", "top_keys"),
    main_table="sinks.parquet",
    recognized=True,
)
_TEXT_ABLATION = RunFormat(
    "text-ablation",
    "generations that see only the first text token, against the full prompt",
    (
        FileSpec("text_ablation.parquet", "table", "one row per prompt and method: SSIM, PSNR, frame MSE, colours"),
        FileSpec("text_ablation.csv", "csv", "text_ablation.parquet as CSV"),
        FileSpec("frames.safetensors", "tensors", "raw frames: p{i}.full and p{i}.{method}"),
        FileSpec(
            "run.json",
            "json",
            "model, family, seed, prompts, methods: what `vditscope report` needs (earlier releases lack it)",
            always=False,
        ),
        FileSpec("report.html", "html", "the self-contained report"),
        FIGURES,
    ),
    info="run.json",
    main_table="text_ablation.parquet",
)
_COMPARE = RunFormat(
    "compare",
    "per-layer similarity of the attention maps of two analyze runs",
    (
        FileSpec(
            "compare.parquet",
            "table",
            "per matched layer pair: mean Pearson correlation of the maps",
            columns=COMPARE_COLUMNS,
        ),
        FileSpec("compare.csv", "csv", "compare.parquet as CSV"),
        FileSpec("compare.png", "figure", "the per-layer bars"),
        FileSpec("compare.html", "html", "the self-contained report"),
        FileSpec(
            "compare.json",
            "json",
            "the two runs (path, model, family) and how they were matched: what `vditscope report` needs "
            "(earlier releases lack it)",
            always=False,
        ),
        FIGURES,
    ),
    info="compare.json",
    main_table="compare.parquet",
)
_CHECKPOINT = FileSpec("checkpoint.safetensors", "tensors", "the last checkpoint: weights and AdamW moments")
_STATE = FileSpec("state.json", "json", "the step, settings and loss history of the last checkpoint")
_TRAIN_TINY = RunFormat(
    "train-tiny",
    "a resumable training run of the tiny shapes video model",
    (_CHECKPOINT, _STATE),
    info="state.json",
    main_fields=("step", "config"),
    resumable=True,
)
_TRAIN_TINY_LM = RunFormat(
    "train-tiny-lm",
    "a resumable training run of the tiny language model",
    (
        _CHECKPOINT,
        _STATE,
        FileSpec("tokenizer.json", "json", "the run's tokenizer (trained at the first start)"),
        FileSpec("checkpoint.safetensors.tmp", "partial", "a checkpoint being written", always=False),
        FileSpec("state.json.tmp", "partial", "a state being written", always=False),
        FileSpec("tokenizer.json.tmp", "partial", "a tokenizer being written", always=False),
    ),
    info="state.json",
    main_fields=("step", "config"),
    resumable=True,
)
_RENDER_CLIPS = RunFormat(
    "render-clips",
    "captioned shapes clips: a data folder for retrain --mode flow",
    (
        FileSpec("clip*.mp4", "video", "clipNNNN.mp4: one rendered clip"),
        FileSpec("clip*.txt", "text", "clipNNNN.txt: its caption"),
    ),
)


def _study(name: str, kind: Kind, holds: str, claim: str) -> FileSpec:
    return FileSpec(name, kind, holds, always=False, claim=claim, stage="study")


_RETRAIN = RunFormat(
    "retrain",
    "re-initialized blocks trained again (resumable), then the before/after study",
    (
        _CHECKPOINT,
        _STATE,
        FileSpec("loss.png", "figure", "the training loss"),
        FileSpec("model", "folder", "the retrained pipeline (a `retrain export` output)"),
        _study("study.json", "json", "the study's models, layers and settings", "study*"),
        _study("study_sinks.parquet", "table", "per model and layer: sink heads and the largest ratio", "study*"),
        _study("study_sparsity.parquet", "table", "per model and level: quality under sparsity", "study*"),
        _study("study_quality.parquet", "table", "the retrained model's quality against the original", "study*"),
        _study(
            "study_videos.safetensors",
            "tensors",
            "the original's and the retrained model's video of the first prompt (frames x height x width x 3)",
            "study*",
        ),
        _study("study.html", "html", "the study's self-contained report", "study*"),
        _study("figures", "folder", "every figure of the study report as NAME.png and NAME.svg", "figures"),
        _study(
            "sweep-original", "folder", "the original model's sparsity sweep (a `sweep sparsity` output)", "sweep-*"
        ),
        _study("sweep-retrained", "folder", "the retrained model's sparsity sweep", "sweep-*"),
    ),
    info="state.json",
    main_fields=("step", "run"),
    resumable=True,
)


def _export(command: str, files: tuple[FileSpec, ...], summary: str) -> RunFormat:
    rest = FileSpec("*", "other", "the rest of the saved model, as the library writes it", always=False, claim="*")
    return RunFormat(
        command, summary, (*files, rest), info="vditscope.json", main_fields=("trained", "training", "retrained")
    )


_PIPELINE = (
    FileSpec("model_index.json", "json", "the diffusers pipeline's components", claim="*"),
    FileSpec("vditscope.json", "json", "generation settings, vocabulary and what was trained", claim="*"),
)
FORMATS: dict[str, RunFormat] = {
    f.command: f
    for f in (
        _ANALYZE,
        _sweep("sparsity"),
        _sweep("temperature"),
        _EDIT,
        _EDIT_SWEEP,
        _GENERATE,
        _SINKS,
        _TEXT_ABLATION,
        _COMPARE,
        _TRAIN_TINY,
        _TRAIN_TINY_LM,
        _RENDER_CLIPS,
        _RETRAIN,
        _export("train-tiny export", _PIPELINE, "the trained tiny pipeline as a diffusers directory"),
        _export("retrain export", _PIPELINE, "the retrained pipeline as a diffusers directory"),
        _export(
            "train-tiny-lm export",
            (
                FileSpec("config.json", "json", "the transformers model configuration", claim="*"),
                FileSpec("model.safetensors", "tensors", "the model's weights", claim="*"),
                FileSpec("tokenizer.json", "json", "the tokenizer", claim="*"),
                FileSpec("vditscope.json", "json", "training settings, held-out losses, sink summary", claim="*"),
            ),
            "the trained tiny language model as a transformers directory",
        ),
    )
}


def run_format(command: str) -> RunFormat:
    """The declared format of ``command`` (ValueError for a command that declares none)."""
    try:
        return FORMATS[command]
    except KeyError:
        known = ", ".join(sorted(FORMATS))
        raise ValueError(f"no declared run format for command {command!r} (known: {known})") from None


def files_of(command: str, stage: str | None = None) -> tuple[str, ...]:
    """The names and globs ``command`` claims in its output (``OutputDir(files=...)``), in declared order;
    with ``stage`` only those that stage adds (``files_of("retrain", stage="study")``)."""
    specs = run_format(command).files
    globs = (spec.glob for spec in specs if stage is None or spec.stage == stage)
    return tuple(dict.fromkeys(globs))
