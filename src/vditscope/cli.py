"""Command line: thin wrappers around the library. Only this module knows about argument parsing."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .errors import VditscopeError

app = typer.Typer(
    help="vditscope: see and change what attention does inside video diffusion transformers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err = Console(stderr=True)


def _progress_bar() -> Progress:
    """The progress bar every long command shows on stderr: description, bar, count, elapsed, ETA."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
    )


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
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1 ...")] = "cpu",
    dtype: Annotated[str, typer.Option(help="float32, float16 or bfloat16.")] = "float32",
    top_mass: Annotated[str, typer.Option(help="Top-k mass curve: auto, exact, estimate or off.")] = "auto",
) -> None:
    """Generate with attention capture and write run.json, stats.parquet, maps.safetensors, report.html."""
    from .analyses.analyze import AnalyzeRequest, run_analyze

    if top_mass not in ("auto", "exact", "estimate", "off"):
        raise VditscopeError(f"--top-mass must be auto, exact, estimate or off, got {top_mass}")
    request = AnalyzeRequest(
        model=model,
        prompts=list(prompt or []),
        seeds=list(seed or [0]),
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
    )
    if model is None:
        err.print("[dim]model: tiny-wan, the small Wan model that ships with vditscope[/dim]")
    with _progress_bar() as bar:
        task = bar.add_task("loading the model", total=None)

        def progress(message: str, done: int, total: int) -> None:
            bar.update(task, description=message, completed=done, total=total)

        path = run_analyze(request, progress)
    typer.echo(f"wrote {path}/ (run.json, stats.parquet, maps.safetensors, report.html)")


@app.command("train-tiny")
def train_tiny(
    out: Annotated[Path, typer.Option(help="Training run directory (checkpoints; rerun to resume).")] = Path(
        "runs/train-tiny-wan"
    ),
    steps: Annotated[int, typer.Option(help="Total optimizer steps.")] = 4000,
    minutes: Annotated[float | None, typer.Option(help="Stop (with a checkpoint) after this many minutes.")] = None,
    export: Annotated[Path | None, typer.Option(help="Also save the trained pipeline directory here.")] = None,
    family: Annotated[str, typer.Option(help="Model family to train (wan).")] = "wan",
) -> None:
    """Train the small shapes text-to-video model from scratch on this CPU (resumable)."""
    from .training.tiny import TinyConfig, export_pipeline, train

    if family != "wan":
        raise VditscopeError(f"train-tiny knows the family wan, not {family}")
    if steps < 1:
        raise VditscopeError("--steps must be positive")
    with _progress_bar() as bar:
        task = bar.add_task("training", total=steps)

        def progress(step: int, total: int, loss: float) -> None:
            bar.update(task, completed=step, description=f"training (loss {loss:.4f})")

        train(out, TinyConfig(family=family), steps=steps, minutes=minutes, progress=progress)
    typer.echo(f"checkpoint in {out}/")
    if export is not None:
        export_pipeline(out, export)
        typer.echo(f"pipeline saved to {export}/")


@app.command("eval-tiny")
def eval_tiny(
    model: Annotated[str, typer.Option(help="Shapes pipeline directory (default: the shipped tiny Wan).")] = "tiny",
    count: Annotated[int, typer.Option(help="Held-out caption combinations to generate (>= 40 advised).")] = 40,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the results as JSON.")] = None,
) -> None:
    """Colour and motion accuracy on held-out captions, and same-frame attention per layer."""
    import json

    from .training.evaluate import evaluate_directory

    if count < 1:
        raise VditscopeError("--count must be positive")
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
        json_out.write_text(json.dumps(result.to_dict(), indent=1) + "\n")


@app.command()
def families() -> None:
    """List the supported model families and their diffusers transformer classes."""
    from .adapters import ADAPTERS

    for name, cls in ADAPTERS.items():
        typer.echo(f"{name:14s} {', '.join(cls.model_classes)}")


def main() -> None:
    """Entry point: run the app and turn user errors into one line on stderr with exit code 2."""
    try:
        app(standalone_mode=False)
    except VditscopeError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except (ValueError, FileNotFoundError) as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted", markup=False)
        sys.exit(130)
    except Exception as exc:  # click usage errors and aborts
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Exit):
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
