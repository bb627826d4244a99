"""The command line's shared options (one Annotated alias per option and help text) and the parsing of their values.

An alias carries the option's name and help; the default stays in each command's signature, where it shows.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from .errors import VditscopeError

T = TypeVar("T")

# What to generate with and where to write: the options of every generating command.
ModelOpt = Annotated[
    str | None, typer.Option(help="Pipeline directory, cached model id or shipped name (tiny-cogvideox-motion).")
]
PromptsOpt = Annotated[list[str] | None, typer.Option("--prompt", help="Prompt (repeat; default: 2 from the model).")]
SeedsOpt = Annotated[list[int] | None, typer.Option("--seed", help="Seed (repeat for several).")]
SeedOpt = Annotated[int, typer.Option(help="Seed.")]
NoiseSeedOpt = Annotated[int, typer.Option(help="Seed of the shared initial noise.")]
RunDirOpt = Annotated[Path, typer.Option(help="Run directory to write.")]
OutDirOpt = Annotated[Path, typer.Option(help="Output directory.")]
SweepDirOpt = Annotated[Path, typer.Option(help="Sweep directory (rerun to resume).")]
StepsOpt = Annotated[int | None, typer.Option(help="Number of denoising steps.")]
FramesOpt = Annotated[int | None, typer.Option(help="Number of frames.")]
HeightOpt = Annotated[int | None, typer.Option(help="Video height in pixels.")]
WidthOpt = Annotated[int | None, typer.Option(help="Video width in pixels.")]
DeviceOpt = Annotated[str, typer.Option(help="auto (CUDA when available), cpu, cuda, cuda:1 ...")]
DtypeOpt = Annotated[str, typer.Option(help="float32, float16 or bfloat16.")]


def free_cores(cores: int, load: float) -> int:
    """Threads that do not oversubscribe a machine of `cores` cores whose run queue holds `load` other jobs
    (at least 1): two busy jobs with torch's default threads each on 2 cores ran 10-30x slower."""
    return max(1, min(cores, int(cores - load + 0.5)))


def use_threads(threads: int | None) -> int | None:
    """Set torch's CPU threads: `threads`, or (None) the free cores unless OMP_NUM_THREADS already says; the
    callback of --threads, so it returns the option's value."""
    import torch

    if threads is not None:
        if threads < 1:
            raise VditscopeError(f"--threads must be positive, got {threads}")
        torch.set_num_threads(threads)
    elif "OMP_NUM_THREADS" not in os.environ and hasattr(os, "getloadavg") and hasattr(os, "sched_getaffinity"):
        torch.set_num_threads(free_cores(len(os.sched_getaffinity(0)), os.getloadavg()[0]))
    return threads


ThreadsOpt = Annotated[
    int | None,
    typer.Option(
        help="CPU threads for torch (default: the cores not busy with other work, by the 1-minute load; "
        "OMP_NUM_THREADS when set).",
        callback=use_threads,
    ),
]
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

# Where an attention edit applies (the sweeps).
HeadsOpt = Annotated[str | None, typer.Option(help="Heads to edit (default all).")]
EditStepsOpt = Annotated[str | None, typer.Option(help="Denoising steps to edit, START:STOP (default all).")]
BranchOpt = Annotated[list[str] | None, typer.Option(help="CFG branch(es) to edit: cond, uncond.")]

# Self-attention transfer (edit, edit-sweep).
SourcePromptOpt = Annotated[str, typer.Option(help="Prompt of the source generation.")]
TargetPromptOpt = Annotated[str, typer.Option(help="Edited prompt.")]
StepsRangeOpt = Annotated[
    str | None,
    typer.Option(
        "--edit-steps",
        "--steps-range",
        help="Denoising steps to transfer, START:STOP (default: edit the first 80%, edit-sweep all).",
    ),
]
TransferModeOpt = Annotated[
    str, typer.Option(help="kv: target queries on the source's keys and values; attention: source's Q and K.")
]

# Training (train-tiny, train-tiny-lm).
TrainStepsOpt = Annotated[int, typer.Option(help="Total optimizer steps.")]
MinutesOpt = Annotated[float | None, typer.Option(help="Stop (with a checkpoint) after this many minutes.")]

# Options of one command whose declaration does not fit on one line of its signature.
AnalyzeModelOpt = Annotated[
    str | None,
    typer.Option(
        help="Local diffusers pipeline directory, cached model id, or a shipped model name "
        "(tiny-cogvideox-motion, the default)."
    ),
]
MapStepsOpt = Annotated[
    str | None, typer.Option(help="Steps whose token maps are kept (default: 4 spread over the captured steps).")
]
AnalyzePlanOpt = Annotated[
    Path | None, typer.Option(help="Apply a sparsity plan (plan.json of a sweep) while analyzing.")
]
SinksModelOpt = Annotated[
    str | None,
    typer.Option(help="Video pipeline or transformers text model directory, or a shipped name (tiny-lm)."),
]
LmOpt = Annotated[
    str | None, typer.Option(help="A transformers text model to compare with, side by side (e.g. tiny-lm).")
]
SparsityMethodOpt = Annotated[
    str,
    typer.Option(
        help="bottom-k, top-p, blocks (key blocks holding mass p; block-sparse), or a structured mask: "
        "spatial, temporal, tiles, svg."
    ),
]
WindowOpt = Annotated[
    str | None, typer.Option(help="Half-widths frames,rows,columns of a spatial/temporal/tiles window.")
]
TrainOutOpt = Annotated[
    Path | None,
    typer.Option(help="Training run directory (checkpoints; rerun to resume). Default: runs/train-tiny-FAMILY."),
]


def one_of(option: str, choices: tuple[str, ...]) -> Callable[[Any], Any]:
    """An option callback that refuses a value outside `choices` with the one-line error of bad input (click's own
    choice check prints a usage screen)."""

    def check(value: Any) -> Any:
        if value is not None and value not in choices:
            raise VditscopeError(f"{option} must be {', '.join(choices[:-1])} or {choices[-1]}, got {value}")
        return value

    return check


TopMassOpt = Annotated[
    str,
    typer.Option(
        help="Top-k mass curve: auto, exact, estimate or off.",
        callback=one_of("--top-mass", ("auto", "exact", "estimate", "off")),
    ),
]
CaptureStepsOpt = Annotated[str | None, typer.Option(help="Denoising steps to observe (default all).")]
# the choices of adapters.loading.OFFLOADS (not imported here: it loads torch, and --help stays fast)
OFFLOADS = ("none", "model", "sequential", "group")
OffloadOpt = Annotated[
    str,
    typer.Option(
        help="Keep the weights on the CPU between uses, for models larger than the GPU: none, model (a component "
        "at a time), sequential (a layer at a time; needs a GPU) or group (a transformer block at a time).",
        callback=one_of("--offload", OFFLOADS),
    ),
]
# the choices of adapters.placement.COMPILES
COMPILES = ("none", "regional", "model")
CompileOpt = Annotated[
    str,
    typer.Option(
        help="Compile the transformer with torch.compile: none, regional (each block, full graphs; the blocks "
        "holding an observed attention run eagerly while it is observed) or model (the whole transformer; its "
        "graph breaks around observed attention).",
        callback=one_of("--compile", COMPILES),
    ),
]
ContextParallelOpt = Annotated[
    int,
    typer.Option(
        "--context-parallel",
        help="Split the sequence over N GPUs (Ulysses attention; Wan and LTX): start with torchrun "
        "--nproc-per-node N -m vditscope.cli ...; only rank 0 writes --out.",
    ),
]

# Option groups: (annotation, default) by parameter name, added to a command's signature by `with_options`.
OptionGroup = dict[str, tuple[Any, Any]]
MODEL: OptionGroup = {"model": (ModelOpt, None)}
VIDEO: OptionGroup = {
    "steps": (StepsOpt, None),
    "num_frames": (FramesOpt, None),
    "height": (HeightOpt, None),
    "width": (WidthOpt, None),
    "device": (DeviceOpt, "auto"),
    "dtype": (DtypeOpt, "float32"),
    "offload": (OffloadOpt, "none"),
    "compile": (CompileOpt, "none"),
    "context_parallel": (ContextParallelOpt, 1),
    "threads": (ThreadsOpt, None),
}
OVERWRITE: OptionGroup = {"overwrite": (OverwriteOpt, False)}
EXECUTION: OptionGroup = {"executor": (ExecutorOpt, "local"), "address": (AddressOpt, None)}
EDIT_WHERE: OptionGroup = {"heads": (HeadsOpt, None), "edit_steps": (EditStepsOpt, None), "branch": (BranchOpt, None)}
GENERATING: tuple[OptionGroup, ...] = (MODEL, VIDEO, OVERWRITE)  # every command that generates videos


def with_options(*groups: OptionGroup, **overrides: Any) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Add the groups' options to a command's signature (after its own, which win on a name clash; an override
    ``name=default`` or ``name=(annotation, default)`` changes one). The command receives every option's value by
    name in its keyword-only parameter ``options`` (a dict, like its locals()), its own ones also by name."""

    def decorate(command: Callable[..., T]) -> Callable[..., T]:
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != "options"]
        shared: OptionGroup = {name: spec for group in groups for name, spec in group.items()}
        for name, value in overrides.items():
            shared[name] = value if isinstance(value, tuple) else (shared[name][0], value)
        taken = {p.name for p in own}
        added = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)
            for name, (annotation, default) in shared.items()
            if name not in taken
        ]

        @functools.wraps(command)
        def run(**values: Any) -> T:
            return command(**{p.name: values[p.name] for p in own}, options=values)

        run.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + added
        )
        run.__annotations__ = {p.name: p.annotation for p in run.__signature__.parameters.values()}  # type: ignore[attr-defined]
        return run

    return decorate


# The shared generation options (parameter name -> request field), as generation_fields hands them on.
_GENERATION_FIELDS = {
    "model": "model",
    "out": "out",
    "steps": "num_inference_steps",
    "num_frames": "num_frames",
    "height": "height",
    "width": "width",
    "device": "device",
    "dtype": "dtype",
    "offload": "offload",
    "compile": "compile",
    "context_parallel": "context_parallel",
    "overwrite": "overwrite",
    "executor": "executor",
    "address": "address",
}


def generation_fields(options: Mapping[str, Any]) -> dict[str, Any]:
    """The request fields of the shared generation options a command has (model, out, steps, num_frames, height,
    width, device, dtype, offload, compile, context_parallel, overwrite, executor, address); `options` holds the
    command's options by name.
    Prompts and seeds differ between commands (one or several, their defaults): each command passes its own."""
    return {field: options[name] for name, field in _GENERATION_FIELDS.items() if name in options}


def parse_int_list(text: str | None, what: str) -> list[int] | None:
    """'0,3,5-7' -> [0, 3, 5, 6, 7]."""
    if text is None:
        return None
    return _parse_list([text], what, _int_range, "bad {what} list {text!r}: use numbers like 0,3,5-7")


def parse_float_list(values: list[str] | None, what: str) -> list[float] | None:
    """Repeated options and comma lists: ['0.1,0.5', '0.9'] -> [0.1, 0.5, 0.9]."""
    if values is None:
        return None
    return _parse_list(values, what, lambda part: [float(part)], "bad {what} {part!r}: use numbers like 0.1,0.5")


def _int_range(part: str) -> list[int]:
    """'5-7' -> [5, 6, 7]; '-2' -> [-2]."""
    if "-" in part[1:]:
        lo, hi = part.split("-", 1) if not part.startswith("-") else (part, part)
        return list(range(int(lo), int(hi) + 1))
    return [int(part)]


def _parse_list(texts: list[str], what: str, parse: Callable[[str], list[T]], bad: str) -> list[T]:
    """The values of the comma-separated parts of `texts`; a part `parse` rejects fails with the line `bad`
    (formatted with what, text and part), and so does an empty list."""
    values: list[T] = []
    for text in texts:
        for part in filter(None, (p.strip() for p in text.split(","))):
            try:
                values.extend(parse(part))
            except ValueError:
                raise VditscopeError(bad.format(what=what, text=text, part=part)) from None
    if not values:
        raise VditscopeError(f"the {what} list is empty")
    return values


def parse_step_range(text: str | None) -> tuple[int, int] | None:
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
