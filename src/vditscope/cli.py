"""Command line: thin wrappers around the library. Only this module knows about argument parsing."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .analyses.options import checked_seed
from .errors import VditscopeError
from .store import OutputDir

app = typer.Typer(
    help="vditscope: see and change what attention does inside video diffusion transformers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err = Console(stderr=True)


def _progress_bar() -> Progress:
    """The progress bar every long command shows on stderr: description, bar, count, elapsed, ETA.
    Off a terminal (logs, pipes) it prints nothing at all, so an error stays the only line."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=not err.is_terminal,
    )


def _loading(model: str | None) -> str:
    """The progress bar's first words (no separate banner line: an error must stay the only line)."""
    return f"loading {model}" if model else "loading tiny-wan, the small Wan model that ships with vditscope"


def _parse_int_list(text: str | None, what: str) -> list[int] | None:
    """'0,3,5-7' -> [0, 3, 5, 6, 7]."""
    if text is None:
        return None
    values: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            if "-" in part[1:]:
                lo, hi = part.split("-", 1) if not part.startswith("-") else (part, part)
                values.extend(range(int(lo), int(hi) + 1))
            else:
                values.append(int(part))
        except ValueError:
            raise VditscopeError(f"bad {what} list {text!r}: use numbers like 0,3,5-7") from None
    if not values:
        raise VditscopeError(f"the {what} list is empty")
    return values


OverwriteOpt = Annotated[
    bool,
    typer.Option(
        "--overwrite",
        help="Allow --out to be a non-empty folder that is not an earlier output of this command; "
        "files of yours there are never removed or replaced.",
    ),
]
ExecutorOpt = Annotated[
    str, typer.Option(help="Where generations run: local (this process) or ray (the workers of a Ray cluster).")
]
AddressOpt = Annotated[
    str | None,
    typer.Option(help="With --executor ray: auto (a running cluster) or HOST:PORT of its head (default: this node)."),
]


@app.command()
def analyze(
    model: Annotated[
        str | None,
        typer.Option(
            help="Local diffusers pipeline directory, cached model id, or a shipped model name (tiny-wan, the default)."
        ),
    ] = None,
    prompt: Annotated[list[str] | None, typer.Option(help="Prompt (repeat for several).")] = None,
    out: Annotated[Path, typer.Option(help="Run directory to write.")] = Path("runs/analyze"),
    seed: Annotated[list[int] | None, typer.Option(help="Seed (repeat for several).")] = None,
    layers: Annotated[str | None, typer.Option(help="Layers to capture, e.g. 0,2,5-7 (default all).")] = None,
    capture_steps: Annotated[str | None, typer.Option(help="Denoising steps to capture (default all).")] = None,
    height: Annotated[int | None, typer.Option(help="Video height in pixels.")] = None,
    width: Annotated[int | None, typer.Option(help="Video width in pixels.")] = None,
    num_frames: Annotated[int | None, typer.Option(help="Number of frames.")] = None,
    steps: Annotated[int | None, typer.Option(help="Number of denoising steps.")] = None,
    guidance_scale: Annotated[float | None, typer.Option(help="Classifier-free guidance scale.")] = None,
    device: Annotated[str, typer.Option(help="auto (CUDA when available), cpu, cuda, cuda:1 ...")] = "auto",
    dtype: Annotated[str, typer.Option(help="float32, float16 or bfloat16.")] = "float32",
    top_mass: Annotated[str, typer.Option(help="Top-k mass curve: auto, exact, estimate or off.")] = "auto",
    map_tiles: Annotated[int, typer.Option(help="Token maps: video tokens pooled into at most this many tiles.")] = 256,
    map_steps: Annotated[
        str | None, typer.Option(help="Steps whose token maps are kept (default: 4 spread over the captured steps).")
    ] = None,
    plan: Annotated[
        Path | None, typer.Option(help="Apply a sparsity plan (plan.json of a sweep) while analyzing.")
    ] = None,
    executor: ExecutorOpt = "local",
    address: AddressOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Generate with attention capture and write run.json, stats.parquet, maps.safetensors, report.html."""
    from .analyses.analyze import AnalyzeRequest, run_analyze

    if top_mass not in ("auto", "exact", "estimate", "off"):
        raise VditscopeError(f"--top-mass must be auto, exact, estimate or off, got {top_mass}")
    request = AnalyzeRequest(
        model=model,
        prompts=list(prompt or []),
        seeds=list(seed) if seed else list(AnalyzeRequest.seeds),
        out=out,
        layers=_parse_int_list(layers, "layer"),
        capture_steps=_parse_int_list(capture_steps, "step"),
        height=height,
        width=width,
        num_frames=num_frames,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        device=device,
        dtype=dtype,
        top_mass=top_mass,
        map_tiles=map_tiles,
        map_steps=_parse_int_list(map_steps, "map step"),
        plan=plan,
        executor=executor,
        address=address,
        overwrite=overwrite,
    )
    with _progress_bar() as bar:
        task = bar.add_task(_loading(model), total=None)

        def progress(message: str, done: int, total: int) -> None:
            bar.update(task, description=message, completed=done, total=total)

        path = run_analyze(request, progress)
    typer.echo(f"wrote {path}/ (run.json, stats.parquet, maps.safetensors, report.html)")


def _parse_float_list(values: list[str] | None, what: str) -> list[float] | None:
    """Repeated options and comma lists: ['0.1,0.5', '0.9'] -> [0.1, 0.5, 0.9]."""
    if values is None:
        return None
    numbers: list[float] = []
    for text in values:
        for part in filter(None, (p.strip() for p in text.split(","))):
            try:
                numbers.append(float(part))
            except ValueError:
                raise VditscopeError(f"bad {what} {part!r}: use numbers like 0.1,0.5") from None
    if not numbers:
        raise VditscopeError(f"the {what} list is empty")
    return numbers


def _parse_step_range(text: str | None) -> tuple[int, int] | None:
    """'a:b' -> (a, b), the half-open range of denoising steps an edit applies to."""
    if text is None:
        return None
    try:
        start, stop = (int(x) for x in text.split(":"))
    except ValueError:
        raise VditscopeError(f"bad step range {text!r}: use START:STOP, e.g. 0:10") from None
    if not 0 <= start < stop:
        raise VditscopeError(f"bad step range {text!r}: need 0 <= START < STOP")
    return start, stop


sweep_app = typer.Typer(help="Sparsity and temperature sweeps, scored against dense generations.", no_args_is_help=True)
app.add_typer(sweep_app, name="sweep")

PromptOpt = Annotated[list[str] | None, typer.Option("--prompt", help="Prompt (repeat; default: 2 from the model).")]
SeedOpt = Annotated[list[int] | None, typer.Option("--seed", help="Seed (repeat for several).")]
ModelOpt = Annotated[str | None, typer.Option(help="Pipeline directory, cached model id or shipped name (tiny-wan).")]
StepsOpt = Annotated[int | None, typer.Option(help="Number of denoising steps.")]
FramesOpt = Annotated[int | None, typer.Option(help="Number of frames.")]
HeightOpt = Annotated[int | None, typer.Option(help="Video height in pixels.")]
WidthOpt = Annotated[int | None, typer.Option(help="Video width in pixels.")]
DeviceOpt = Annotated[str, typer.Option(help="auto (CUDA when available), cpu, cuda ...")]
DtypeOpt = Annotated[str, typer.Option(help="float32, float16 or bfloat16.")]
HeadsOpt = Annotated[str | None, typer.Option(help="Heads to edit (default all).")]
EditStepsOpt = Annotated[str | None, typer.Option(help="Denoising steps to edit, START:STOP (default all).")]
BranchOpt = Annotated[list[str] | None, typer.Option(help="CFG branch(es) to edit: cond, uncond.")]


def _sweep_common(
    model: str | None,
    prompt: list[str] | None,
    seed: list[int] | None,
    out: Path,
    steps: int | None,
    num_frames: int | None,
    height: int | None,
    width: int | None,
    device: str,
    dtype: str,
    overwrite: bool,
) -> dict[str, object]:
    """The SweepRequest fields every sweep command shares."""
    return {
        "model": model,
        "prompts": list(prompt or []),
        "seeds": list(seed) if seed else [0],
        "out": out,
        "num_inference_steps": steps,
        "num_frames": num_frames,
        "height": height,
        "width": width,
        "device": device,
        "dtype": dtype,
        "overwrite": overwrite,
    }


def _run_sweep_command(request: object) -> None:
    from .analyses.sweep import run_sweep, sensitivity_table

    with _progress_bar() as bar:
        task = bar.add_task("loading the model", total=None)

        def progress(message: str, done: int, total: int) -> None:
            bar.update(task, description=message, completed=done, total=total)

        out = run_sweep(request, progress)  # type: ignore[arg-type]
    import pandas as pd

    table = pd.read_parquet(out / "sweep.parquet")
    sensitivity = sensitivity_table(table)
    if not sensitivity.empty:
        typer.echo(sensitivity.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    typer.echo(
        f"wrote {out}/ (sweep.parquet, sweep.csv, report.html{', plan.json' if (out / 'plan.json').exists() else ''})"
    )


@sweep_app.command("sparsity")
def sweep_sparsity(
    k: Annotated[list[str] | None, typer.Option("--k", help="Bottom-k share(s) of keys to drop, in [0, 1).")] = None,
    p: Annotated[list[str] | None, typer.Option("--p", help="Top-p mass(es) to keep (with --method top-p).")] = None,
    method: Annotated[
        str, typer.Option(help="bottom-k, top-p, or a structured mask: spatial, temporal, tiles, svg.")
    ] = "bottom-k",
    window: Annotated[
        str | None, typer.Option(help="Half-widths frames,rows,columns of a spatial/temporal/tiles window.")
    ] = None,
    dense_first_steps: Annotated[int, typer.Option(help="Keep the first N denoising steps dense.")] = 0,
    per_layer: Annotated[bool, typer.Option("--per-layer", help="One layer sparsified at a time (default).")] = False,
    global_: Annotated[bool, typer.Option("--global", help="All chosen layers sparsified together.")] = False,
    leave_out: Annotated[str | None, typer.Option(help="All layers but these (and all layers), e.g. 2,3.")] = None,
    layers: Annotated[str | None, typer.Option(help="Layers to sweep (per-layer) or to edit (global).")] = None,
    heads: HeadsOpt = None,
    edit_steps: EditStepsOpt = None,
    branch: BranchOpt = None,
    psnr_target: Annotated[float, typer.Option(help="PSNR (dB) a layer must keep for the plan.")] = 30.0,
    model: ModelOpt = None,
    prompt: PromptOpt = None,
    seed: SeedOpt = None,
    out: Annotated[Path, typer.Option(help="Sweep directory (rerun to resume).")] = Path("runs/sweep-sparsity"),
    steps: StepsOpt = None,
    num_frames: FramesOpt = None,
    height: HeightOpt = None,
    width: WidthOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    executor: ExecutorOpt = "local",
    address: AddressOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Sparsify attention (bottom-k or top-p) per layer, globally, or in all layers but some; score each cell."""
    from .analyses.sweep import SweepRequest

    if sum([per_layer, global_, leave_out is not None]) > 1:
        raise VditscopeError("choose one of --per-layer, --global and --leave-out")
    scope = "global" if global_ else "leave-out" if leave_out is not None else "per-layer"
    levels = _parse_float_list(p if method == "top-p" else k, "p" if method == "top-p" else "k")
    request = SweepRequest(
        mode="sparsity",
        scope=scope,
        method=method,
        levels=levels if levels is not None else ([0.9] if method == "top-p" else [0.5]),
        layers=_parse_int_list(layers, "layer"),
        leave_out=_parse_int_list(leave_out, "layer"),
        heads=_parse_int_list(heads, "head"),
        steps=_parse_step_range(edit_steps),
        dense_first_steps=dense_first_steps,
        window=tuple(_parse_int_list(window, "window") or ()) or None,  # type: ignore[arg-type]
        branches=branch,
        psnr_target=psnr_target,
        executor=executor,
        address=address,
        **_sweep_common(model, prompt, seed, out, steps, num_frames, height, width, device, dtype, overwrite),
    )
    _run_sweep_command(request)


@sweep_app.command("temperature")
def sweep_temperature(
    tau: Annotated[list[str] | None, typer.Option("--tau", help="Temperature(s): logits / tau, tau > 0.")] = None,
    k: Annotated[list[str] | None, typer.Option("--k", help="Bottom-k share(s) to combine with (default 0).")] = None,
    layers: Annotated[str | None, typer.Option(help="Layers to edit (default all).")] = None,
    heads: HeadsOpt = None,
    edit_steps: EditStepsOpt = None,
    branch: BranchOpt = None,
    model: ModelOpt = None,
    prompt: PromptOpt = None,
    seed: SeedOpt = None,
    out: Annotated[Path, typer.Option(help="Sweep directory (rerun to resume).")] = Path("runs/sweep-temperature"),
    steps: StepsOpt = None,
    num_frames: FramesOpt = None,
    height: HeightOpt = None,
    width: WidthOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    executor: ExecutorOpt = "local",
    address: AddressOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """A temperature x bottom-k grid on chosen layers, each cell scored against dense."""
    from .analyses.sweep import SweepRequest

    request = SweepRequest(
        mode="temperature",
        scope="global",
        levels=_parse_float_list(k, "k") or [0.0],
        temperatures=_parse_float_list(tau, "temperature") or [0.5, 1.0, 2.0],
        layers=_parse_int_list(layers, "layer"),
        heads=_parse_int_list(heads, "head"),
        steps=_parse_step_range(edit_steps),
        branches=branch,
        executor=executor,
        address=address,
        **_sweep_common(model, prompt, seed, out, steps, num_frames, height, width, device, dtype, overwrite),
    )
    _run_sweep_command(request)


@app.command()
def generate(
    plan: Annotated[Path | None, typer.Option(help="Sparsity plan (plan.json of a sweep) to apply.")] = None,
    model: ModelOpt = None,
    prompt: Annotated[str | None, typer.Option(help="Prompt (default: one from the model).")] = None,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("runs/generate"),
    steps: StepsOpt = None,
    num_frames: FramesOpt = None,
    height: HeightOpt = None,
    width: WidthOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    overwrite: OverwriteOpt = False,
) -> None:
    """Generate one video, with a sparsity plan applied next to the dense generation."""
    from .analyses.planned import GenerateRequest, run_generate

    request = GenerateRequest(
        plan=plan, model=model, prompt=prompt, seed=seed, out=out, num_inference_steps=steps,
        num_frames=num_frames, height=height, width=width, device=device, dtype=dtype, overwrite=overwrite,
    )  # fmt: skip
    path, metrics = run_generate(request)
    for key in ("psnr", "ssim", "sparsity", "mass_dropped"):
        if key in metrics:
            typer.echo(f"{key}: {metrics[key]:.4f}")
    typer.echo(f"wrote {path}/ (frames.safetensors, preview.gif, metrics.json)")


TransferModeOpt = Annotated[
    str, typer.Option(help="kv: target queries on the source's keys and values; attention: source's Q and K.")
]


@app.command()
def edit(
    source_prompt: Annotated[str, typer.Option(help="Prompt of the source generation.")],
    target_prompt: Annotated[str, typer.Option(help="Edited prompt.")],
    layers: Annotated[str | None, typer.Option(help="Self-attention layers to transfer (default all).")] = None,
    edit_steps: Annotated[str | None, typer.Option("--steps-range", help="Steps to transfer, START:STOP.")] = None,
    mode: TransferModeOpt = "kv",
    model: ModelOpt = None,
    seed: Annotated[int, typer.Option(help="Seed of the shared initial noise.")] = 0,
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("runs/edit"),
    steps: StepsOpt = None,
    num_frames: FramesOpt = None,
    height: HeightOpt = None,
    width: WidthOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    overwrite: OverwriteOpt = False,
) -> None:
    """Edit by self-attention transfer: source, plain target and edited videos side by side, with metrics."""
    from .analyses.edit import EditRequest, run_edit

    request = EditRequest(
        source_prompt=source_prompt, target_prompt=target_prompt, layers=_parse_int_list(layers, "layer"),
        steps=_parse_step_range(edit_steps), mode=mode, model=model, seed=seed, out=out, num_inference_steps=steps,
        num_frames=num_frames, height=height, width=width, device=device, dtype=dtype, overwrite=overwrite,
    )  # fmt: skip
    path, metrics = run_edit(request)
    for pair in ("edited_vs_source", "target_vs_source", "edited_vs_target"):
        typer.echo(f"{pair}: SSIM {metrics[pair]['ssim']:.3f}, PSNR {metrics[pair]['psnr']:.2f} dB")
    if "colour" in metrics:
        typer.echo(f"colour read from the frames: {metrics['colour']}")
        typer.echo(f"track distance to the source (px): {metrics['track_distance_px']}")
    typer.echo(f"wrote {path}/ (source.mp4, target.mp4, edited.mp4, preview.gif, frames.safetensors, metrics.json)")


@app.command("edit-sweep")
def edit_sweep(
    source_prompt: Annotated[str, typer.Option(help="Prompt of the source generation.")],
    target_prompt: Annotated[str, typer.Option(help="Edited prompt.")],
    window: Annotated[int, typer.Option(help="Consecutive layers transferred together.")] = 1,
    layers: Annotated[str | None, typer.Option(help="Layers to try (default all).")] = None,
    edit_steps: Annotated[str | None, typer.Option("--steps-range", help="Steps to transfer, START:STOP.")] = None,
    mode: TransferModeOpt = "kv",
    model: ModelOpt = None,
    seed: Annotated[int, typer.Option(help="Seed of the shared initial noise.")] = 0,
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("runs/edit-sweep"),
    steps: StepsOpt = None,
    num_frames: FramesOpt = None,
    height: HeightOpt = None,
    width: WidthOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    overwrite: OverwriteOpt = False,
) -> None:
    """Transfer one layer window at a time to find the layers that carry layout (score per layer, figure)."""
    from .analyses.edit import EditRequest, run_edit_sweep

    request = EditRequest(
        source_prompt=source_prompt, target_prompt=target_prompt, layers=_parse_int_list(layers, "layer"),
        steps=_parse_step_range(edit_steps), mode=mode, model=model, seed=seed, out=out, window=window,
        num_inference_steps=steps, num_frames=num_frames, height=height, width=width, device=device, dtype=dtype,
        overwrite=overwrite,
    )  # fmt: skip
    with _progress_bar() as bar:
        task = bar.add_task("plain target", total=None)
        path, table = run_edit_sweep(
            request,
            lambda message, done, total: bar.update(task, description=message, completed=done, total=total),
        )
    typer.echo(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    typer.echo(f"wrote {path}/ (edit_sweep.parquet, edit_sweep.csv, edit_sweep.png, report.html)")


@app.command("text-ablation")
def text_ablation(
    model: ModelOpt = None,
    prompt: PromptOpt = None,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    method: Annotated[list[str] | None, typer.Option(help="mask and/or truncate (default both).")] = None,
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("runs/text-ablation"),
    steps: StepsOpt = None,
    num_frames: FramesOpt = None,
    height: HeightOpt = None,
    width: WidthOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    overwrite: OverwriteOpt = False,
) -> None:
    """Generate with only the first text token reaching the video; score against the full prompt."""
    from .analyses.text_dominance import TextAblationRequest, run_text_ablation

    request = TextAblationRequest(
        model=model, prompts=list(prompt or []), seed=seed, methods=list(method or ("mask", "truncate")), out=out,
        num_inference_steps=steps, num_frames=num_frames, height=height, width=width, device=device, dtype=dtype,
        overwrite=overwrite,
    )  # fmt: skip
    with _progress_bar() as bar:
        task = bar.add_task(_loading(model), total=None)
        path, table = run_text_ablation(
            request, lambda message, done, total: bar.update(task, description=message, completed=done, total=total)
        )
    typer.echo(table.drop(columns=["prompt"]).to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    typer.echo(f"wrote {path}/ (text_ablation.parquet, text_ablation.csv, frames.safetensors, report.html)")


@app.command()
def compare(
    run_a: Annotated[Path, typer.Argument(help="First run directory (from vditscope analyze).")],
    run_b: Annotated[Path, typer.Argument(help="Second run directory.")],
    out: Annotated[Path, typer.Option(help="Directory for compare.parquet/.csv/.png/.html.")] = Path("runs/compare"),
    overwrite: OverwriteOpt = False,
) -> None:
    """Per-layer similarity of the attention maps of two runs (two models, two settings), with a figure."""
    from .analyses.compare import run_compare

    comparison, path = run_compare(run_a, run_b, out, overwrite)
    for note in comparison.notes:
        err.print(f"[yellow]note:[/yellow] {note}")
    typer.echo(comparison.table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    typer.echo(f"wrote {path}/ (compare.parquet, compare.csv, compare.png, compare.html)")


@app.command("train-tiny")
def train_tiny(
    out: Annotated[
        Path | None,
        typer.Option(help="Training run directory (checkpoints; rerun to resume). Default: runs/train-tiny-FAMILY."),
    ] = None,
    steps: Annotated[int, typer.Option(help="Total optimizer steps.")] = 4000,
    minutes: Annotated[float | None, typer.Option(help="Stop (with a checkpoint) after this many minutes.")] = None,
    export: Annotated[Path | None, typer.Option(help="Also save the trained pipeline directory here.")] = None,
    family: Annotated[str, typer.Option(help="Model family to train: wan or cogvideox.")] = "wan",
    overwrite: OverwriteOpt = False,
) -> None:
    """Train the small shapes text-to-video model from scratch on this CPU (resumable)."""
    from .training.recipes import RECIPES
    from .training.tiny import TinyConfig, export_pipeline, train

    if family not in RECIPES:
        raise VditscopeError(f"unknown model family {family}: train-tiny knows {', '.join(RECIPES)}")
    out = out if out is not None else Path(f"runs/train-tiny-{family}")
    if steps < 1:
        raise VditscopeError("--steps must be positive")
    if export is not None:
        OutputDir(export, "train-tiny export", files=("*",), inputs=[out], overwrite=overwrite).check()
    with _progress_bar() as bar:
        task = bar.add_task("training", total=steps)

        def progress(step: int, total: int, loss: float) -> None:
            bar.update(task, completed=step, description=f"training (loss {loss:.4f})")

        train(out, TinyConfig(family=family), steps=steps, minutes=minutes, progress=progress, overwrite=overwrite)
    typer.echo(f"checkpoint in {out}/")
    if export is not None:
        typer.echo(f"pipeline saved to {export_pipeline(out, export, overwrite=overwrite)}/")


@app.command("train-tiny-lm")
def train_tiny_lm(
    out: Annotated[Path, typer.Option(help="Training run directory (checkpoints; rerun to resume).")] = Path(
        "runs/train-tiny-lm"
    ),
    steps: Annotated[int, typer.Option(help="Total optimizer steps.")] = 4000,
    minutes: Annotated[float | None, typer.Option(help="Stop (with a checkpoint) after this many minutes.")] = None,
    eval_every: Annotated[int, typer.Option(help="Held-out losses every this many steps (0: none).")] = 1000,
    export: Annotated[Path | None, typer.Option(help="Also save the transformers model directory here.")] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Train the small language model of the sink comparison (tiny-lm) on Python's docs and sources."""
    from .training.tiny_lm import TinyLMConfig, export_tiny_lm
    from .training.tiny_lm import train_tiny_lm as run_training

    if steps < 1:
        raise VditscopeError("--steps must be positive")
    if export is not None:
        OutputDir(export, "train-tiny-lm export", files=("*",), inputs=[out], overwrite=overwrite).check()
    with _progress_bar() as bar:
        task = bar.add_task("training", total=steps)

        def progress(step: int, total: int, loss: float) -> None:
            bar.update(task, completed=step, description=f"training (loss {loss:.4f})")

        run_training(
            out, steps, TinyLMConfig(), minutes=minutes, eval_every=eval_every, progress=progress, overwrite=overwrite
        )
    typer.echo(f"checkpoint in {out}/")
    if export is not None:
        typer.echo(f"model saved to {export_tiny_lm(out, export, overwrite=overwrite)}/")


@app.command("render-clips")
def render_clips(
    out: Annotated[Path, typer.Option(help="Folder to write clipNNNN.mp4 and .txt captions into.")] = Path(
        "runs/shape-clips"
    ),
    count: Annotated[int, typer.Option(help="Number of clips.")] = 640,
    seed: Annotated[int, typer.Option(help="Seed of the caption draw and the motion.")] = 0,
    overwrite: OverwriteOpt = False,
) -> None:
    """Render captioned shapes clips: a --data folder for `retrain --mode flow` on the tiny models."""
    from .training.clips import write_shape_clips

    typer.echo(f"wrote {count} clips to {write_shape_clips(out, count, seed=checked_seed(seed), overwrite=overwrite)}/")


@app.command("eval-tiny")
def eval_tiny(
    model: Annotated[str, typer.Option(help="Shapes pipeline directory (default: the shipped tiny Wan).")] = "tiny",
    count: Annotated[int, typer.Option(help="Held-out caption combinations to generate (>= 40 advised).")] = 40,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the results as JSON.")] = None,
) -> None:
    """Colour and motion accuracy on held-out captions, and same-frame attention per layer."""
    from .adapters.loading import resolve_model_dir
    from .store import checked_output_file, write_atomic
    from .training.evaluate import evaluate_directory

    if count < 1:
        raise VditscopeError("--count must be positive")
    if json_out is not None:
        json_out = checked_output_file(json_out, "eval-tiny", inputs=[resolve_model_dir(model)])
    with _progress_bar() as bar:
        task = bar.add_task("generating held-out clips", total=count)
        result = evaluate_directory(model, count=count, progress=lambda done, total: bar.update(task, completed=done))
    typer.echo(f"clips: {result.count}")
    typer.echo(f"colour accuracy: {result.color_accuracy:.1%}")
    typer.echo(f"direction accuracy: {result.direction_accuracy:.1%}")
    typer.echo("same-frame attention mass / uniform share, per layer:")
    for layer, ratio in result.same_frame_ratio.items():
        typer.echo(f"  layer {layer}: {ratio:.2f}x")
    if json_out is not None:
        text = json.dumps({"written_by": "vditscope eval-tiny", **result.to_dict()}, indent=1) + "\n"
        write_atomic(json_out, lambda path: path.write_text(text))


@app.command()
def sinks(
    model: Annotated[
        str | None,
        typer.Option(help="Video pipeline or transformers text model directory, or a shipped name (tiny-lm)."),
    ] = None,
    prompt: Annotated[list[str] | None, typer.Option(help="Video prompt (repeat; default: 3 from the model).")] = None,
    text: Annotated[list[str] | None, typer.Option(help="Text for a text model (repeat; default: built in).")] = None,
    lm: Annotated[
        str | None, typer.Option(help="A transformers text model to compare with, side by side (e.g. tiny-lm).")
    ] = None,
    lm_text: Annotated[list[str] | None, typer.Option(help="Text for the --lm model (repeat).")] = None,
    out: Annotated[Path, typer.Option(help="Run directory to write.")] = Path("runs/sinks"),
    seed: SeedOpt = None,
    layers: Annotated[str | None, typer.Option(help="Layers to observe, e.g. 0,2,5-7 (default all).")] = None,
    capture_steps: Annotated[str | None, typer.Option(help="Denoising steps to observe (default all).")] = None,
    threshold: Annotated[float, typer.Option(help="Sink: received >= this many times the median key's.")] = 10.0,
    top_keys: Annotated[int, typer.Option(help="Keys kept per head and call (video models).")] = 16,
    ablation: Annotated[bool, typer.Option(help="Measure removing the sinks against removing random keys.")] = True,
    ablation_layers: Annotated[str | None, typer.Option(help="Layers to ablate (default: where sinks are).")] = None,
    max_tokens: Annotated[int, typer.Option(help="Text models: tokens per text (longer texts are cut).")] = 512,
    steps: StepsOpt = None,
    num_frames: FramesOpt = None,
    height: HeightOpt = None,
    width: WidthOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    overwrite: OverwriteOpt = False,
) -> None:
    """Find attention sinks (per layer, head and step), where they sit, their key/value norms, what removing
    them does; on a video pipeline or a language model, or both side by side (--lm)."""
    from .analyses.sinks import SinksRequest, run_sinks

    if prompt and text:
        raise VditscopeError("give --prompt (video model) or --text (text model), not both")
    request = SinksRequest(
        model=model, prompts=list(prompt or text or []), seeds=list(seed) if seed else [0], out=out,
        layers=_parse_int_list(layers, "layer"), capture_steps=_parse_int_list(capture_steps, "step"),
        threshold=threshold, top_keys=top_keys, ablation=ablation,
        ablation_layers=_parse_int_list(ablation_layers, "ablation layer"), lm=lm, lm_texts=list(lm_text or []),
        max_tokens=max_tokens, num_inference_steps=steps, num_frames=num_frames, height=height, width=width,
        device=device, dtype=dtype, overwrite=overwrite,
    )  # fmt: skip
    with _progress_bar() as bar:
        task = bar.add_task("loading the model", total=None)
        path = run_sinks(
            request, lambda message, done, total: bar.update(task, description=message, completed=done, total=total)
        )
    typer.echo(f"wrote {path}/ (sinks.parquet, sink_layers.parquet, sink_where.parquet, report.html)")


@app.command()
def retrain(
    model: ModelOpt = None,
    blocks: Annotated[str, typer.Option(help="Blocks to re-initialize and train, e.g. -2,-1 (the last two).")] = "-1",
    mode: Annotated[str, typer.Option(help="distill (from the original, no data) or flow (on --data).")] = "distill",
    data: Annotated[Path | None, typer.Option(help="flow mode: folder of *.mp4/*.gif, .txt captions.")] = None,
    prompt: Annotated[list[str] | None, typer.Option(help="distill mode: prompts to distill on (repeat).")] = None,
    train_steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 300,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 3e-4,
    batch: Annotated[int, typer.Option(help="Videos (or noise samples) per step.")] = 2,
    seed: Annotated[int, typer.Option(help="Seed of the re-initialization and of the training stream.")] = 0,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 50,
    out: Annotated[Path, typer.Option(help="Run directory (rerun to resume).")] = Path("runs/retrain"),
    study: Annotated[bool, typer.Option(help="Then compare sinks, sparsity and quality before/after.")] = True,
    levels: Annotated[list[str] | None, typer.Option(help="Study: bottom-k levels to sweep (repeat).")] = None,
    steps: StepsOpt = None,
    device: DeviceOpt = "auto",
    overwrite: OverwriteOpt = False,
) -> None:
    """Re-initialize chosen transformer blocks and train only them (rest frozen); then before/after study."""
    from .analyses.retrain_study import RetrainStudyRequest, run_retrain_study
    from .training.retrain import RetrainRequest
    from .training.retrain import retrain as run_retrain

    request = RetrainRequest(
        model=model or "tiny-wan", blocks=_parse_int_list(blocks, "block") or [], mode=mode, data=data,
        prompts=list(prompt or []), steps=train_steps, lr=lr, batch=batch, seed=seed,
        checkpoint_every=checkpoint_every, out=out, device=device, overwrite=overwrite,
    )  # fmt: skip
    study_levels = _parse_float_list(levels, "level") or [0.5, 0.8, 0.9]
    with _progress_bar() as bar:
        task = bar.add_task("loading the model", total=None)

        def progress(step: int, total: int, loss: float) -> None:
            bar.update(task, description=f"retraining, loss {loss:.4f}", completed=step, total=total)

        model_dir = run_retrain(request, progress)
    typer.echo(f"wrote {model_dir}/ (the retrained pipeline), {out}/loss.png")
    if not study:
        return
    info = json.loads((model_dir / "vditscope.json").read_text()).get("retrained", {})
    with _progress_bar() as bar:
        task = bar.add_task("study", total=None)
        tables = run_retrain_study(
            RetrainStudyRequest(
                original=model or "tiny-wan", retrained=model_dir, layers=info.get("blocks", []), out=out,
                prompts=list(prompt or [])[:2], levels=study_levels, device=device, num_inference_steps=steps,
            ),
            lambda message, done, total: bar.update(task, description=message, completed=done, total=total),
        )  # fmt: skip
    typer.echo(tables["sinks"][tables["sinks"]["retrained"]][["model", "layer", "sink_heads", "max_ratio"]]
               .to_string(index=False, float_format=lambda x: f"{x:.2f}"))  # fmt: skip
    typer.echo(f"wrote {out}/study.html (study_sinks, study_sparsity, study_quality .parquet)")


@app.command()
def families() -> None:
    """List the supported model families and their diffusers transformer classes."""
    from .adapters import ADAPTERS

    for name, cls in ADAPTERS.items():
        typer.echo(f"{name:14s} {', '.join(cls.model_classes)}")


def main() -> None:
    """Entry point: run the app and turn user errors into one line on stderr with exit code 2."""
    try:
        code = app(standalone_mode=False)
    except VditscopeError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except (ValueError, OverflowError) as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except OSError as exc:  # file system failures: one line naming the path
        where = f": {exc.filename}" if exc.filename else ""
        err.print(f"error: {exc.strerror or exc}{where}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted", markup=False)
        sys.exit(130)
    except Exception as exc:  # click usage errors and aborts (typer may vendor its own click: match by name)
        kinds = {cls.__name__ for cls in type(exc).__mro__}
        if "ClickException" in kinds:
            exc.show()  # type: ignore[attr-defined]
            sys.exit(exc.exit_code)  # type: ignore[attr-defined]
        if "Exit" in kinds:
            sys.exit(exc.exit_code)  # type: ignore[attr-defined]
        if "Abort" in kinds:
            sys.exit(1)
        raise
    if isinstance(code, int) and code:  # typer returns (not raises) an Exit's code and 130 for Ctrl-C
        if code == 130:
            err.print("interrupted", markup=False)
        sys.exit(code)


if __name__ == "__main__":
    main()
