"""Command line: thin wrappers around the library. Only this module (and cli_options, its shared options) knows
about argument parsing."""

from __future__ import annotations

import datetime
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn
from rich.text import Text

from .cli_options import (
    EDIT_WHERE,
    EXECUTION,
    GENERATING,
    MODEL,
    OVERWRITE,
    AnalyzeModelOpt,
    AnalyzePlanOpt,
    CaptureStepsOpt,
    ContextParallelOpt,
    DeviceOpt,
    DtypeOpt,
    FramesOpt,
    HeightOpt,
    LmOpt,
    MapStepsOpt,
    MinutesOpt,
    NoiseSeedOpt,
    OffloadOpt,
    OptionGroup,
    OutDirOpt,
    OverwriteOpt,
    PromptsOpt,
    RunDirOpt,
    SeedOpt,
    SeedsOpt,
    SinksModelOpt,
    SourcePromptOpt,
    SparsityMethodOpt,
    StepsOpt,
    StepsRangeOpt,
    SweepDirOpt,
    TargetPromptOpt,
    TopMassOpt,
    TrainOutOpt,
    TrainStepsOpt,
    TransferModeOpt,
    WidthOpt,
    WindowOpt,
    generation_fields,
    parse_float_list,
    parse_int_list,
    parse_step_range,
    with_options,
)
from .errors import VditscopeError
from .progress import ProgressFn
from .store import OutputDir
from .store.output import follower_rank
from .thresholds import SINK_RATIO
from .tiny import DEFAULT_FAMILY, DEFAULT_MODEL

app = typer.Typer(
    help="vditscope: see and change what attention does inside video diffusion transformers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
sweep_app = typer.Typer(help="Sparsity and temperature sweeps, scored against dense generations.", no_args_is_help=True)
err = Console(stderr=True)
T = TypeVar("T")


class RemainingColumn(ProgressColumn):
    """Time left, from the mean pace since the count (of the current total) first moved in this process.

    rich's own estimate uses only the last 30 s, so units slower than that (a sweep cell of a real model)
    never get one; units found done at start (a resumed run) do not count as pace."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.clock = clock
        self.origin: dict[Any, tuple[float | None, float, float]] = {}  # task id -> (total, time, completed)

    def render(self, task: Task) -> Text:
        total, now = task.total, self.clock()
        origin = self.origin.get(task.id)
        if origin is None or origin[0] != total or task.completed < origin[2]:
            origin = self.origin[task.id] = (total, now, task.completed)
        _, start, done_at_start = origin
        done = task.completed - done_at_start
        if total is None or done <= 0:
            return Text("-:--:--", style="progress.remaining")
        left = (total - task.completed) * (now - start) / done
        return Text(str(datetime.timedelta(seconds=round(max(left, 0.0)))), style="progress.remaining")


class CountColumn(ProgressColumn):
    """done/total, or nothing while the total is unknown (loading)."""

    def render(self, task: Task) -> Text:
        return Text("" if task.total is None else f"{task.completed:g}/{task.total:g}")


def progress_bar(clock: Callable[[], float] = time.monotonic) -> Progress:
    """The progress bar every long command shows on stderr: description, bar, count, elapsed, time left.
    Off a terminal (logs, pipes) it prints nothing at all, so an error stays the only line."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        CountColumn(),
        TimeElapsedColumn(),
        RemainingColumn(clock),
        console=err,
        disable=not err.is_terminal,
        get_time=clock,
    )


def _with_progress(description: str, run: Callable[..., T], *args: Any, total: int | None = None) -> T:
    """``run(*args, progress)`` under the progress bar, and what it returns. The bar starts as `description` (of
    `total` units, unknown by default); the library moves it with ``progress(message, done, total)``."""
    with progress_bar() as bar:
        task = bar.add_task(description, total=total)

        def progress(message: str, done: int, total: int | None) -> None:
            bar.update(task, description=message, completed=done, total=total)

        return run(*args, progress)


def _loss_progress(progress: ProgressFn, text: str) -> Callable[[int, int, float], None]:
    """A training loop's ``progress(step, total, loss)`` shown on the bar as `text` with {loss} filled in."""
    return lambda step, total, loss: progress(text.format(loss=loss), step, total)


def _loading(model: str | None) -> str:
    """The progress bar's first words (no separate banner line: an error must stay the only line)."""
    if model:
        return f"loading {model}"
    return "loading tiny-cogvideox-motion, the small CogVideoX model that ships with vditscope"


def _table(table: Any, digits: int) -> str:
    """A result table as the commands print it: no index, floats to `digits` decimals."""
    return table.to_string(index=False, float_format=lambda x: f"{x:.{digits}f}")


@app.command()
@with_options(*GENERATING, EXECUTION, model=(AnalyzeModelOpt, None))
def analyze(
    prompt: Annotated[list[str] | None, typer.Option(help="Prompt (repeat for several).")] = None,
    out: RunDirOpt = Path("runs/analyze"),
    seed: SeedsOpt = None,
    layers: Annotated[str | None, typer.Option(help="Layers to capture, e.g. 0,2,5-7 (default all).")] = None,
    capture_steps: Annotated[str | None, typer.Option(help="Denoising steps to capture (default all).")] = None,
    guidance_scale: Annotated[float | None, typer.Option(help="Classifier-free guidance scale.")] = None,
    top_mass: TopMassOpt = "auto",
    map_tiles: Annotated[int, typer.Option(help="Token maps: video tokens pooled into at most this many tiles.")] = 256,
    map_steps: MapStepsOpt = None,
    plan: AnalyzePlanOpt = None,
    *,
    options: dict[str, Any],
) -> None:
    """Generate with attention capture and write run.json, stats.parquet, maps.safetensors, report.html."""
    from .analyses.analyze import AnalyzeRequest, run_analyze

    request = AnalyzeRequest(
        prompts=list(prompt or []), seeds=list(seed or AnalyzeRequest.seeds), layers=parse_int_list(layers, "layer"),
        capture_steps=parse_int_list(capture_steps, "step"), guidance_scale=guidance_scale, top_mass=top_mass,
        map_tiles=map_tiles, map_steps=parse_int_list(map_steps, "map step"), plan=plan, **generation_fields(options),
    )  # fmt: skip
    path = _with_progress(_loading(options["model"]), run_analyze, request)
    typer.echo(f"wrote {path}/ ({', '.join(sorted(f.name for f in path.iterdir() if not f.name.startswith('.')))})")


app.add_typer(sweep_app, name="sweep")
SWEEP_OPTIONS = (*GENERATING, EXECUTION, EDIT_WHERE, {"prompt": (PromptsOpt, None), "seed": (SeedsOpt, None)})


def _run_sweep(options: dict[str, Any], **fields: Any) -> None:
    """Run the SweepRequest of `fields` and of the options both sweeps share (`options`: every option by name),
    then print the layers' sensitivity and what was written."""
    import pandas as pd

    from .analyses.sweep import SweepRequest, run_sweep, sensitivity_table

    request = SweepRequest(
        prompts=list(options["prompt"] or []), seeds=list(options["seed"] or [0]),
        layers=parse_int_list(options["layers"], "layer"), heads=parse_int_list(options["heads"], "head"),
        steps=parse_step_range(options["edit_steps"]), branches=options["branch"], **generation_fields(options),
        **fields,
    )  # fmt: skip
    out = _with_progress("loading the model", run_sweep, request)
    sensitivity = sensitivity_table(pd.read_parquet(out / "sweep.parquet"))
    if not sensitivity.empty:
        typer.echo(_table(sensitivity, 2))
    plan = ", plan.json" if (out / "plan.json").exists() else ""
    typer.echo(f"wrote {out}/ (sweep.parquet, sweep.csv, report.html{plan})")


@sweep_app.command("sparsity")
@with_options(*SWEEP_OPTIONS, out=(SweepDirOpt, Path("runs/sweep-sparsity")))
def sweep_sparsity(
    k: Annotated[list[str] | None, typer.Option("--k", help="Bottom-k share(s) of keys to drop, in [0, 1).")] = None,
    p: Annotated[
        list[str] | None, typer.Option("--p", help="Mass(es) to keep (with --method top-p or blocks), in (0, 1].")
    ] = None,
    method: SparsityMethodOpt = "bottom-k",
    window: WindowOpt = None,
    dense_first_steps: Annotated[int, typer.Option(help="Keep the first N denoising steps dense.")] = 0,
    per_layer: Annotated[bool, typer.Option("--per-layer", help="One layer sparsified at a time (default).")] = False,
    global_: Annotated[bool, typer.Option("--global", help="All chosen layers sparsified together.")] = False,
    leave_out: Annotated[str | None, typer.Option(help="All layers but these (and all layers), e.g. 2,3.")] = None,
    layers: Annotated[str | None, typer.Option(help="Layers to sweep (per-layer) or to edit (global).")] = None,
    psnr_target: Annotated[float, typer.Option(help="PSNR (dB) a layer must keep for the plan.")] = 30.0,
    *,
    options: dict[str, Any],
) -> None:
    """Sparsify attention (bottom-k, top-p, blocks or a mask) per layer, globally, or in all layers but some;
    score each cell."""
    if sum([per_layer, global_, leave_out is not None]) > 1:
        raise VditscopeError("choose one of --per-layer, --global and --leave-out")
    top_p = method in ("top-p", "blocks")
    levels = parse_float_list(p if top_p else k, "p" if top_p else "k")
    _run_sweep(
        options, mode="sparsity", scope="global" if global_ else "leave-out" if leave_out is not None else "per-layer",
        method=method, levels=levels if levels is not None else ([0.9] if top_p else [0.5]),
        leave_out=parse_int_list(leave_out, "layer"), dense_first_steps=dense_first_steps,
        window=tuple(parse_int_list(window, "window") or ()) or None, psnr_target=psnr_target,
    )  # fmt: skip


@sweep_app.command("temperature")
@with_options(*SWEEP_OPTIONS, out=(SweepDirOpt, Path("runs/sweep-temperature")))
def sweep_temperature(
    tau: Annotated[list[str] | None, typer.Option("--tau", help="Temperature(s): logits / tau, tau > 0.")] = None,
    k: Annotated[list[str] | None, typer.Option("--k", help="Bottom-k share(s) to combine with (default 0).")] = None,
    layers: Annotated[str | None, typer.Option(help="Layers to edit (default all).")] = None,
    *,
    options: dict[str, Any],
) -> None:
    """A temperature x bottom-k grid on chosen layers, each cell scored against dense."""
    _run_sweep(options, mode="temperature", scope="global", levels=parse_float_list(k, "k") or [0.0],
               temperatures=parse_float_list(tau, "temperature") or [0.5, 1.0, 2.0])  # fmt: skip


def seconds_line(seconds: dict[str, float]) -> str:
    """Dense and planned generation times side by side, FlexAttention's first-call compilation apart."""
    line = f"dense {seconds['dense']:.2f} s"
    if "planned" in seconds:
        line += f" | planned {seconds['planned']:.2f} s ({seconds['speedup']:.2f}x)"
        if seconds["compile"] > 0:
            line += f" | compiling FlexAttention {seconds['compile']:.1f} s (first call per shape; cached on disk)"
    return line


@app.command()
@with_options(*GENERATING, EXECUTION, out=(OutDirOpt, Path("runs/generate")))
def generate(
    plan: Annotated[Path | None, typer.Option(help="Sparsity plan (plan.json of a sweep) to apply.")] = None,
    prompt: Annotated[str | None, typer.Option(help="Prompt (default: one from the model).")] = None,
    seed: SeedOpt = 0,
    *,
    options: dict[str, Any],
) -> None:
    """Generate one video, with a sparsity plan applied next to the dense generation."""
    from .analyses.generate import GenerateRequest, run_generate

    path, metrics = run_generate(GenerateRequest(plan=plan, prompt=prompt, seed=seed, **generation_fields(options)))
    for key in ("psnr", "ssim", "sparsity", "mass_dropped"):
        if key in metrics:
            value = metrics[key]
            typer.echo(f"{key}: " + ("not measured (block-sparse path)" if value != value else f"{value:.4f}"))
    typer.echo(seconds_line(metrics["seconds"]))
    typer.echo(f"wrote {path}/ (frames.safetensors, preview.gif, metrics.json)")


TRANSFER_OPTIONS = (
    {"source_prompt": (SourcePromptOpt, ...), "target_prompt": (TargetPromptOpt, ...)},
    *GENERATING,
    {"edit_steps": (StepsRangeOpt, None), "mode": (TransferModeOpt, "kv"), "seed": (NoiseSeedOpt, 0)},
)


@app.command()
@with_options(*TRANSFER_OPTIONS, EXECUTION, out=(OutDirOpt, Path("runs/edit")))
def edit(
    layers: Annotated[str | None, typer.Option(help="Self-attention layers to transfer (default all).")] = None,
    *,
    options: dict[str, Any],
) -> None:
    """Edit by self-attention transfer: source, plain target and edited videos side by side, with metrics."""
    from .analyses.edit import run_edit

    path, metrics = run_edit(_edit_request(options))
    _echo_edit_metrics(metrics)
    typer.echo(f"wrote {path}/ (source.mp4, target.mp4, edited.mp4, preview.gif, frames.safetensors, metrics.json)")


def _echo_edit_metrics(metrics: dict[str, Any]) -> None:
    """edit's scores: each pair of videos compared, and what the frames show when the model draws shapes."""
    for pair in ("edited_vs_source", "target_vs_source", "edited_vs_target"):
        typer.echo(f"{pair}: SSIM {metrics[pair]['ssim']:.3f}, PSNR {metrics[pair]['psnr']:.2f} dB")
    if "colour" in metrics:
        typer.echo(f"colour read from the frames: {metrics['colour']}")
        typer.echo(f"track distance to the source (px): {metrics['track_distance_px']}")


def _edit_request(options: dict[str, Any], **fields: Any) -> Any:
    """The EditRequest of edit and edit-sweep (`options`: every option by name) with `fields` added."""
    from .analyses.edit import EditRequest

    return EditRequest(
        source_prompt=options["source_prompt"], target_prompt=options["target_prompt"],
        layers=parse_int_list(options["layers"], "layer"), steps=parse_step_range(options["edit_steps"]),
        mode=options["mode"], seed=options["seed"], **generation_fields(options), **fields,
    )  # fmt: skip


@app.command("edit-sweep")
@with_options(*TRANSFER_OPTIONS, EXECUTION, out=(OutDirOpt, Path("runs/edit-sweep")))
def edit_sweep(
    window: Annotated[int, typer.Option(help="Consecutive layers transferred together.")] = 1,
    layers: Annotated[str | None, typer.Option(help="Layers to try (default all).")] = None,
    *,
    options: dict[str, Any],
) -> None:
    """Transfer one layer window at a time to find the layers that carry layout (score per layer, figure)."""
    from .analyses.edit import run_edit_sweep

    path, table = _with_progress("plain target", run_edit_sweep, _edit_request(options, window=window))
    typer.echo(_table(table, 3))
    typer.echo(f"wrote {path}/ (edit_sweep.parquet, edit_sweep.csv, edit_sweep.png, report.html)")


@app.command("text-ablation")
@with_options(*GENERATING, EXECUTION, out=(OutDirOpt, Path("runs/text-ablation")))
def text_ablation(
    prompt: PromptsOpt = None,
    seed: SeedOpt = 0,
    method: Annotated[list[str] | None, typer.Option(help="mask and/or truncate (default both).")] = None,
    *,
    options: dict[str, Any],
) -> None:
    """Generate with only the first text token reaching the video; score against the full prompt."""
    from .analyses.text_ablation import TextAblationRequest, run_text_ablation

    methods = list(method or ("mask", "truncate"))
    request = TextAblationRequest(prompts=list(prompt or []), seed=seed, methods=methods, **generation_fields(options))
    path, table = _with_progress(_loading(options["model"]), run_text_ablation, request)
    typer.echo(_table(table.drop(columns=["prompt"]), 3))
    typer.echo(f"wrote {path}/ (text_ablation.parquet, text_ablation.csv, frames.safetensors, report.html)")


@app.command()
@with_options(OVERWRITE)
def compare(
    run_a: Annotated[Path, typer.Argument(help="First run directory (from vditscope analyze).")],
    run_b: Annotated[Path, typer.Argument(help="Second run directory.")],
    out: Annotated[Path, typer.Option(help="Directory for compare.parquet/.csv/.png/.html.")] = Path("runs/compare"),
    *,
    options: dict[str, Any],
) -> None:
    """Per-layer similarity of the attention maps of two runs (two models, two settings), with a figure."""
    from .analyses.compare import run_compare

    comparison, path = run_compare(run_a, run_b, out, options["overwrite"])
    for note in comparison.notes:
        err.print(f"[yellow]note:[/yellow] {note}")
    typer.echo(_table(comparison.table, 3))
    typer.echo(f"wrote {path}/ (compare.parquet, compare.csv, compare.png, compare.html)")


REPORT_RUN_HELP = "Run directory of analyze, a sweep, sinks, edit-sweep, text-ablation, compare or retrain."


@app.command()
@with_options(OVERWRITE)
def report(run: Annotated[Path, typer.Argument(help=REPORT_RUN_HELP)], *, options: dict[str, Any]) -> None:
    """Render a run's report.html again from its stored tables and maps (nothing is generated)."""
    from .analyses.render import render_report

    typer.echo(f"wrote {render_report(run, options['overwrite'])}")


def _check_training(steps: int, out: Path, export: Path | None, command: str, overwrite: bool) -> None:
    """What train-tiny and train-tiny-lm check before they start: a positive --steps, a writable --export."""
    if steps < 1:
        raise VditscopeError("--steps must be positive")
    if export is not None:
        OutputDir(export, f"{command} export", inputs=[out], overwrite=overwrite).check()


def _training(total: int, run: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``run(*args, progress=..., **kwargs)``, a training loop of `total` steps, under the progress bar."""

    def with_progress(progress: ProgressFn) -> T:
        return run(*args, progress=_loss_progress(progress, "training (loss {loss:.4f})"), **kwargs)

    return _with_progress("training", with_progress, total=total)


@app.command("train-tiny")
def train_tiny(
    out: TrainOutOpt = None,
    steps: TrainStepsOpt = 4000,
    minutes: MinutesOpt = None,
    export: Annotated[Path | None, typer.Option(help="Also save the trained pipeline directory here.")] = None,
    family: Annotated[
        str, typer.Option(help="Model family to train: cogvideox (tiny-cogvideox-motion's recipe) or wan (tiny-wan's).")
    ] = DEFAULT_FAMILY,
    clips: Annotated[
        str | None,
        typer.Option(
            help="Clip style: grain (tiny-cogvideox-motion's), edge (tiny-wan's), scene, centre, wrap or stride. "
            "Default: the family's shipped model's."
        ),
    ] = None,
    frames: Annotated[
        int | None,
        typer.Option(
            help="Frames per clip, 1 + t * (latent frames - 1) for t frames per latent frame. Default: the family's "
            "shipped model's (9, 17)."
        ),
    ] = None,
    temporal_factor: Annotated[
        int | None,
        typer.Option(help="Video frames per latent frame, 1 or 2. Default: the family's shipped model's."),
    ] = None,
    qk_norm_gain: Annotated[
        float | None,
        typer.Option(
            help="Initial gain of the attention's q and k norms (how sharp a head can start). Default: the family's "
            "shipped model's."
        ),
    ] = None,
    rotary: Annotated[
        bool | None,
        typer.Option(
            help="CogVideoX: rotary positions on q and k besides the sincos ones (default: on, as "
            "tiny-cogvideox-motion; Wan has its own)."
        ),
    ] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Train a small shapes text-to-video model from scratch on this CPU (resumable); by default the recipe of the
    default model, tiny-cogvideox-motion."""
    from .training.tiny import export_pipeline, recipe_config, train

    config = recipe_config(
        family, frames=frames, clips=clips, rotary=rotary, temporal_factor=temporal_factor, qk_norm_gain=qk_norm_gain
    )
    out = out if out is not None else Path(f"runs/train-tiny-{family}")
    _check_training(steps, out, export, "train-tiny", overwrite)
    _training(steps, train, out, config, steps=steps, minutes=minutes, overwrite=overwrite)
    typer.echo(f"checkpoint in {out}/")
    if export is not None:
        typer.echo(f"pipeline saved to {export_pipeline(out, export, overwrite=overwrite)}/")


@app.command("train-tiny-lm")
def train_tiny_lm(
    out: Annotated[Path, typer.Option(help="Training run directory (checkpoints; rerun to resume).")] = Path(
        "runs/train-tiny-lm"
    ),
    steps: TrainStepsOpt = 4000,
    minutes: MinutesOpt = None,
    eval_every: Annotated[int, typer.Option(help="Held-out losses every this many steps (0: none).")] = 1000,
    export: Annotated[Path | None, typer.Option(help="Also save the transformers model directory here.")] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Train the small language model of the sink comparison (tiny-lm) on Python's docs and sources."""
    from .training.tiny_lm import TinyLMConfig, export_tiny_lm
    from .training.tiny_lm import train_tiny_lm as run_training

    _check_training(steps, out, export, "train-tiny-lm", overwrite)
    _training(steps, run_training, out, steps, TinyLMConfig(), minutes=minutes, eval_every=eval_every,
              overwrite=overwrite, on_eval=_echo_heldout)  # fmt: skip
    typer.echo(f"checkpoint in {out}/")
    if export is not None:
        typer.echo(f"model saved to {export_tiny_lm(out, export, overwrite=overwrite)}/")


def _echo_heldout(step: int, losses: dict[str, float]) -> None:
    """A line of held-out losses, as train-tiny-lm measures them (--eval-every)."""
    typer.echo(f"step {step}: held-out loss " + ", ".join(f"{name} {loss:.3f} nats" for name, loss in losses.items()))


@app.command("render-clips")
def render_clips(
    out: Annotated[Path, typer.Option(help="Folder to write clipNNNN.mp4 and .txt captions into.")] = Path(
        "runs/shape-clips"
    ),
    count: Annotated[int, typer.Option(help="Number of clips.")] = 640,
    seed: Annotated[int, typer.Option(help="Seed of the caption draw and the motion.")] = 0,
    model: Annotated[
        str, typer.Option(help="Render the clips this shapes model trained on (size, frames, style).")
    ] = DEFAULT_MODEL,
    overwrite: OverwriteOpt = False,
) -> None:
    """Render captioned shapes clips: a --data folder for `retrain --mode flow` on the tiny models."""
    from .training.clips import shapes_training, write_shape_clips

    config = shapes_training(model)
    written = write_shape_clips(out, count, seed=seed, config=config, overwrite=overwrite)
    typer.echo(f"wrote {count} clips ({config.frames} frames of {config.size} px, as {model} trained on) to {written}/")


@app.command("eval-tiny")
def eval_tiny(
    model: Annotated[str, typer.Option(help="Shapes pipeline directory or shipped name.")] = "tiny",
    count: Annotated[int, typer.Option(help="Held-out caption combinations to generate (>= 40 advised).")] = 40,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the results as JSON.")] = None,
) -> None:
    """Colour and motion accuracy on held-out captions, and same-frame attention per layer."""
    from .adapters.loading import resolve_model_dir
    from .store import checked_output_file
    from .training.evaluate import evaluate_directory

    if count < 1:
        raise VditscopeError("--count must be positive")
    if json_out is not None:
        json_out = checked_output_file(json_out, "eval-tiny", inputs=[resolve_model_dir(model)])
    clips = "generating held-out clips"
    result = _with_progress(clips, lambda progress: evaluate_directory(
        model, count=count, progress=lambda done, total: progress(clips, done, total)), total=count)  # fmt: skip
    _echo_evaluation(result)
    if json_out is not None:
        result.write_json(json_out)


def _echo_evaluation(result: Any) -> None:
    """eval-tiny's results, a line each (the confusion matrix as a table)."""
    from .analyses.structure import TEMPORAL_MASS
    from .training.evaluate import confusion_table

    typer.echo(f"clips: {result.count}")
    typer.echo(f"colour accuracy: {result.color_accuracy:.1%}")
    typer.echo(f"direction accuracy: {result.direction_accuracy:.1%}")
    typer.echo("directions, prompted (rows) against measured (columns), and the accuracy per direction:")
    typer.echo(_table(confusion_table(result), 3))
    typer.echo("same-frame attention mass / uniform share, per layer:")
    for layer, ratio in result.same_frame_ratio.items():
        typer.echo(f"  layer {layer}: {ratio:.2f}x")
    if result.same_position_max:
        rule = f"temporal: >= {TEMPORAL_MASS:.0%}"
        typer.echo(f"largest mass a head puts on its own position in the other frames ({rule}), per layer:")
        for layer, mass in result.same_position_max.items():
            typer.echo(f"  layer {layer}: {mass:.1%}")
    typer.echo("head classes (the report's rule): " + ", ".join(f"{n} {c}" for c, n in result.head_classes.items()))
    for word, rise in result.sensitivity.items():
        typer.echo(f"denoising loss with the wrong {word} in the caption: {rise:+.1%} (0: the word is ignored)")


LANGUAGE_MODEL: OptionGroup = {
    "lm": (LmOpt, None),
    "lm_text": (Annotated[list[str] | None, typer.Option(help="Text for the --lm model (repeat).")], None),
    "max_tokens": (Annotated[int, typer.Option(help="Text models: tokens per text (longer texts are cut).")], 512),
}
SINK_DETECTION: OptionGroup = {
    "threshold": (
        Annotated[float, typer.Option(help="Sink: received >= this many times the median key's (floored at 1/N).")],
        SINK_RATIO,
    ),
    "top_keys": (Annotated[int, typer.Option(help="Keys kept per head and call (video models).")], 16),
}
SINK_ABLATION: OptionGroup = {
    "ablation": (Annotated[bool, typer.Option(help="Measure removing the sinks against removing random keys.")], True),
    "ablation_layers": (Annotated[str | None, typer.Option(help="Layers to ablate (default: where sinks are).")], None),
}


@app.command()
@with_options(
    *GENERATING,
    EXECUTION,
    SINK_DETECTION,
    LANGUAGE_MODEL,
    SINK_ABLATION,
    model=(SinksModelOpt, None),
    out=(RunDirOpt, Path("runs/sinks")),
)
def sinks(
    prompt: Annotated[list[str] | None, typer.Option(help="Video prompt (repeat; default: 3 from the model).")] = None,
    text: Annotated[list[str] | None, typer.Option(help="Text for a text model (repeat; default: built in).")] = None,
    seed: SeedsOpt = None,
    layers: Annotated[str | None, typer.Option(help="Layers to observe, e.g. 0,2,5-7 (default all).")] = None,
    capture_steps: CaptureStepsOpt = None,
    *,
    options: dict[str, Any],
) -> None:
    """Find attention sinks (per layer, head and step), where they sit, their key/value norms, what removing
    them does; on a video pipeline or a language model, or both side by side (--lm)."""
    from .analyses.sinks import SinksRequest, run_sinks

    if prompt and text:
        raise VditscopeError("give --prompt (video model) or --text (text model), not both")
    request = SinksRequest(
        prompts=list(prompt or text or []), seeds=list(seed or [0]), layers=parse_int_list(layers, "layer"),
        capture_steps=parse_int_list(capture_steps, "step"), threshold=options["threshold"],
        top_keys=options["top_keys"], ablation=options["ablation"], lm=options["lm"],
        ablation_layers=parse_int_list(options["ablation_layers"], "ablation layer"),
        lm_texts=list(options["lm_text"] or []), max_tokens=options["max_tokens"], **generation_fields(options),
    )  # fmt: skip
    path = _with_progress("loading the model", run_sinks, request)
    typer.echo(f"wrote {path}/ (sinks.parquet, sink_layers.parquet, sink_where.parquet, report.html)")


RETRAIN_TRAINING: OptionGroup = {
    "train_steps": (Annotated[int, typer.Option(help="Optimizer steps.")], 300),
    "lr": (Annotated[float, typer.Option(help="Peak learning rate.")], 3e-4),
    "batch": (Annotated[int, typer.Option(help="Videos (or noise samples) per step.")], 2),
    "seed": (Annotated[int, typer.Option(help="Seed of the re-initialization and of the training stream.")], 0),
    "checkpoint_every": (Annotated[int, typer.Option(help="Steps between checkpoints.")], 50),
}
RETRAIN_STUDY: OptionGroup = {
    "study": (Annotated[bool, typer.Option(help="Then compare sinks, sparsity and quality before/after.")], True),
    "levels": (Annotated[list[str] | None, typer.Option(help="Study: bottom-k levels to sweep (repeat).")], None),
    "steps": (StepsOpt, None),
}


@app.command()
@with_options(MODEL, RETRAIN_TRAINING, RETRAIN_STUDY, {"device": (DeviceOpt, "auto")}, OVERWRITE)
def retrain(
    blocks: Annotated[str, typer.Option(help="Blocks to re-initialize and train, e.g. -2,-1 (the last two).")] = "-1",
    mode: Annotated[str, typer.Option(help="distill (from the original, no data) or flow (on --data).")] = "distill",
    data: Annotated[Path | None, typer.Option(help="flow mode: folder of *.mp4/*.gif, .txt captions.")] = None,
    prompt: Annotated[list[str] | None, typer.Option(help="distill mode: prompts to distill on (repeat).")] = None,
    out: Annotated[Path, typer.Option(help="Run directory (rerun to resume).")] = Path("runs/retrain"),
    *,
    options: dict[str, Any],
) -> None:
    """Re-initialize chosen transformer blocks and train only them (rest frozen); then before/after study."""
    from .training.retrain import RetrainRequest
    from .training.retrain import retrain as run_retrain

    request = RetrainRequest(
        model=options["model"] or DEFAULT_MODEL, blocks=parse_int_list(blocks, "block") or [], mode=mode, data=data,
        prompts=list(prompt or []), steps=options["train_steps"], lr=options["lr"], batch=options["batch"],
        seed=options["seed"], checkpoint_every=options["checkpoint_every"], out=out, device=options["device"],
        overwrite=options["overwrite"],
    )  # fmt: skip
    study_levels = parse_float_list(options["levels"], "level") or [0.5, 0.8, 0.9]
    model_dir = _with_progress("loading the model", lambda progress: run_retrain(
        request, _loss_progress(progress, "retraining, loss {loss:.4f}")))  # fmt: skip
    typer.echo(f"wrote {model_dir}/ (the retrained pipeline), {out}/loss.png")
    if options["study"]:
        _retrain_study(request, model_dir, study_levels, num_inference_steps=options["steps"])


def _retrain_study(request: Any, model_dir: Path, levels: list[float], num_inference_steps: int | None) -> None:
    """retrain's before/after study of the original and the retrained model in `model_dir`; prints the sinks."""
    from .analyses.retrain_study import run_retrain_study
    from .training.retrain import study_request

    tables = _with_progress("study", run_retrain_study, study_request(request, model_dir, levels, num_inference_steps))
    sinks = tables["sinks"][tables["sinks"]["retrained"]]
    typer.echo(_table(sinks[["model", "layer", "sink_heads", "max_ratio"]], 2))
    typer.echo(f"wrote {request.out}/study.html (study_sinks, study_sparsity, study_quality .parquet)")


@app.command()
def families() -> None:
    """List the supported model families and their diffusers transformer classes."""
    from .adapters import ADAPTERS

    for name, cls in ADAPTERS.items():
        typer.echo(f"{name:14s} {', '.join(cls.model_classes)}")


@app.command()
def memory(
    model: AnalyzeModelOpt = None,
    published: Annotated[str | None, typer.Option(help="A published checkpoint, e.g. Wan2.1-T2V-1.3B.")] = None,
    height: HeightOpt = None,
    width: WidthOpt = None,
    num_frames: FramesOpt = None,
    steps: StepsOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    offload: OffloadOpt = "none",
    context_parallel: ContextParallelOpt = 1,
    layers: Annotated[str | None, typer.Option(help="Layers to capture, e.g. 0,2,5-7 (default all).")] = None,
    map_tiles: Annotated[int, typer.Option(help="Token maps: video tokens pooled into at most this many tiles.")] = 256,
    generations: Annotated[int | None, typer.Option(help="Generations kept (default: prompts x seeds).")] = None,
) -> None:
    """Estimate the memory of an analyze run (weights, activations, statistics, maps, videos); loads no weights."""
    from .analyses.analyze import AnalyzeRequest, estimate_analysis
    from .analyses.memory_plan import memory_summary, memory_table

    request = AnalyzeRequest(
        model=model, height=height, width=width, num_frames=num_frames, num_inference_steps=steps, device=device,
        dtype=dtype, offload=offload, context_parallel=context_parallel, layers=parse_int_list(layers, "layer"),
        map_tiles=map_tiles,
    )  # fmt: skip
    plan = estimate_analysis(request, published, generations)
    summary = memory_summary(plan)
    typer.echo("\n".join([*summary[:4], _table(memory_table(plan), 0), summary[4]]))


@app.command("real-shaped")
def real_shaped(
    published: Annotated[str, typer.Argument(help="A published checkpoint, e.g. Wan2.1-T2V-1.3B or CogVideoX-2b.")],
    out: Annotated[Path, typer.Option(help="New directory for the pipeline.")],
    layers: Annotated[int, typer.Option(help="Transformer blocks (the published width, fewer blocks).")] = 2,
    num_frames: Annotated[int | None, typer.Option(help="Frames of its default generation (default: a few).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
) -> None:
    """Write a random-weight pipeline with a published checkpoint's shapes, to rehearse a run offline."""
    from .adapters.real_shaped import build_real_shaped

    path = _with_progress("building", build_real_shaped, published, out, layers, num_frames, seed)
    typer.echo(f"wrote {path}/ (use it as --model {path})")


def _fail(message: str) -> NoReturn:
    """A user error: one line on stderr, exit code 2."""
    err.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    sys.exit(2)


def _exit_for(exc: Exception) -> NoReturn:
    """Click's usage errors and aborts (typer may vendor its own click: matched by name) exit as click would;
    anything else is a bug and raises on."""
    kinds = {cls.__name__ for cls in type(exc).__mro__}
    if "ClickException" in kinds:
        exc.show()  # type: ignore[attr-defined]
        sys.exit(exc.exit_code)  # type: ignore[attr-defined]
    if "Exit" in kinds:
        sys.exit(exc.exit_code)  # type: ignore[attr-defined]
    if "Abort" in kinds:
        sys.exit(1)
    raise exc


def main() -> None:
    """Entry point: run the app and turn user errors into one line on stderr with exit code 2. In a torchrun
    launch only rank 0 prints results (every rank prints its errors)."""
    if follower_rank():
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)
    try:
        code = app(standalone_mode=False)
    except (VditscopeError, ValueError, OverflowError) as exc:
        _fail(str(exc))
    except OSError as exc:  # file system failures: one line naming the path
        _fail(f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}")
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:
        _exit_for(exc)
    if isinstance(code, int) and code:  # typer returns (not raises) an Exit's code and 130 for Ctrl-C
        if code == 130:
            err.print("interrupted", markup=False)
        sys.exit(code)


if __name__ == "__main__":
    main()
