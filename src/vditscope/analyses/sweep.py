"""`vditscope sweep sparsity|temperature`: generate under attention edits, cell by cell, and score
each cell against the dense generation with the same prompt and seed.

A cell is one edit applied to one (prompt, seed). Every finished cell is written atomically to
``cells/``, and the dense references to ``dense/``, so an interrupted sweep rerun with the same
command computes only what is missing and yields the same table.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from ..adapters.loaded import generate
from ..adapters.settings import default_prompts, model_settings
from ..capture.intervene import AttentionEdit, intervene
from ..errors import VditscopeError
from ..executors import Executor, Job, JobPlan, ModelSpec, Workbench, checked_model_dir, executor_for, run_jobs
from ..progress import ProgressFn
from ..store import OutputDir, files_of, write_atomic
from ..tiny import DEFAULT_MODEL
from . import quality
from .memory_plan import check_generation
from .options import ExecutorOptions, checked_layers, checked_prompts_and_seeds, checked_unique
from .sweep_tables import (
    LEVEL_METHODS,
    MASS_METHODS,
    PLAN_VERSION,
    check_plan,
    head_masks,
    level_column,
    level_edit,
    load_plan,
    sensitivity_table,
    sparsity_plan,
)

MODES = ("sparsity", "temperature")
SCOPES = ("global", "per-layer", "leave-out")
MASK_METHODS = ("spatial", "temporal", "tiles", "svg")
METHODS = LEVEL_METHODS + MASK_METHODS
TABLE_COLUMNS = [
    "mode",
    "scope",
    "method",
    "mask",
    "layers",
    "layer",
    "k",
    "p",
    "temperature",
    "prompt",
    "prompt_index",
    "seed",
    "psnr",
    "ssim",
    "latent_mse",
    "lpips",
    "sparsity",
    "mass_dropped",
    "edited_sparsity",
    "model_mass_dropped",
    "head_masks",
]

# what a sweep writes at the top of its (resumable) directory
SWEEP_FILES = files_of("sweep sparsity")  # the same for every sweep mode


@dataclass
class SweepRequest(ExecutorOptions):
    """What to sweep; None fields take the model's defaults."""

    mode: str = "sparsity"
    scope: str = "per-layer"
    method: str = "bottom-k"
    levels: Sequence[float] = (0.5,)  # k for bottom-k, p for top-p
    temperatures: Sequence[float] = (1.0,)
    layers: Sequence[int] | None = None
    leave_out: Sequence[int] | None = None
    heads: Sequence[int] | None = None
    steps: tuple[int, int] | None = None
    dense_first_steps: int = 0
    branches: Sequence[str] | None = None
    window: tuple[int, int, int] | None = None
    prompts: Sequence[str] = ()
    seeds: Sequence[int] = (0,)
    out: Path = Path("runs/sweep")
    psnr_target: float = 30.0
    chunk_size: int | None = None
    guidance_scale: float | None = None


@dataclass(frozen=True)
class Cell:
    """One edit on one prompt and seed, with the labels its table row carries."""

    edit: AttentionEdit
    layers: str
    layer: int
    prompt_index: int
    seed: int

    def key(self, prompt: str, generation: dict[str, Any], model: str) -> str:
        """A stable file name for the cell: hash of everything that determines its result."""
        blob = json.dumps(
            {
                "edit": self.edit.to_dict(),
                "prompt": prompt,
                "seed": self.seed,
                "generation": generation,
                "model": model,
            },
            sort_keys=True,
        )
        return hashlib.sha1(blob.encode()).hexdigest()[:20]


def validate(request: SweepRequest) -> None:
    """Raise VditscopeError for bad settings before anything is loaded or written."""
    if request.mode not in MODES:
        raise VditscopeError(f"unknown sweep mode {request.mode!r}; choose {' or '.join(MODES)}")
    if request.scope not in SCOPES:
        raise VditscopeError(f"unknown scope {request.scope!r}; choose one of {', '.join(SCOPES)}")
    if request.method not in METHODS:
        raise VditscopeError(f"unknown method {request.method!r}; choose {' or '.join(METHODS)}")
    if not request.levels:
        raise VditscopeError("no sparsity level given")
    if request.method in MASK_METHODS and request.mode == "temperature":
        raise VditscopeError("temperature sweeps combine with bottom-k or top-p levels, not structured masks")
    if request.window is not None and request.method not in ("spatial", "temporal", "tiles"):
        raise VditscopeError("--window goes with --method spatial, temporal or tiles")
    if request.window is not None and (len(request.window) != 3 or min(request.window) < 0):
        raise VditscopeError("--window is three non-negative half-widths: frames,rows,columns")
    if request.dense_first_steps < 0 or (request.dense_first_steps and request.steps is not None):
        raise VditscopeError("--dense-first-steps must be >= 0 and not combined with --edit-steps")
    for level in request.levels if request.method in LEVEL_METHODS else ():
        if request.method == "bottom-k" and not 0.0 <= level < 1.0:
            raise VditscopeError(f"k must be in [0, 1), got {level}")
        if request.method in MASS_METHODS and not 0.0 < level <= 1.0:
            raise VditscopeError(f"p must be in (0, 1], got {level}")
    if not request.temperatures:
        raise VditscopeError("no temperature given")
    for tau in request.temperatures:
        if not (0.0 < tau < math.inf):
            raise VditscopeError(f"temperature must be positive, got {tau}")
    for name in ("layers", "leave_out", "heads"):
        values = getattr(request, name)
        if values is not None and not values:
            raise VditscopeError(f"the {name.replace('_', '-')} set is empty")
    if request.scope == "leave-out" and request.mode == "sparsity" and not request.leave_out:
        raise VditscopeError("--scope leave-out needs --leave-out LAYERS")
    if request.branches is not None and not set(request.branches) <= {"cond", "uncond"}:
        raise VditscopeError(f"branches must be cond and/or uncond, got {', '.join(request.branches)}")
    checked_prompts_and_seeds(request.prompts, request.seeds)
    checked_unique(request.levels, "--p" if request.method in MASS_METHODS else "--k")
    checked_unique(request.temperatures, "--tau")
    if request.steps is not None and not 0 <= request.steps[0] < request.steps[1]:
        raise VditscopeError(f"bad step range {request.steps[0]}:{request.steps[1]}")


def _edit(request: SweepRequest, level: float, temperature: float, layers: set[int] | None) -> AttentionEdit:
    where = {
        "temperature": temperature,
        "heads": frozenset(request.heads) if request.heads is not None else None,
        "branches": frozenset(request.branches) if request.branches is not None else None,
    }
    chosen = frozenset(layers) if layers is not None else None
    if request.method in MASK_METHODS:
        return AttentionEdit(mask=request.method, window=request.window, layers=chosen, steps=request.steps, **where)
    return level_edit(request.method, level, chosen, request.steps, **where)


def plan_cells(request: SweepRequest, num_layers: int, num_prompts: int) -> list[Cell]:
    """Every cell of the sweep, in the order they are computed (edits outermost, then prompts, seeds)."""
    every = list(range(num_layers))
    checked_layers([*(request.layers or []), *(request.leave_out or [])] or None, num_layers)
    chosen = sorted(set(request.layers)) if request.layers is not None else every
    if request.method in MASK_METHODS:
        request = _replace(request, levels=(0.0,))
    variants: list[tuple[AttentionEdit, str, int]] = []
    if request.mode == "temperature" or request.scope == "global":  # the chosen layers together
        label = "all" if chosen == every else ",".join(map(str, chosen))
        grid = [(level, tau) for level in request.levels for tau in request.temperatures]
        if request.mode == "temperature":  # temperature-major, as its table reads
            grid = [(level, tau) for tau in request.temperatures for level in request.levels]
        for level, tau in grid:
            edit = _edit(request, level, tau, None if chosen == every else set(chosen))
            variants.append((edit, label, chosen[0] if len(chosen) == 1 else -1))
    elif request.scope == "per-layer":
        for layer in chosen:
            for level in request.levels:
                for tau in request.temperatures:
                    variants.append((_edit(request, level, tau, {layer}), str(layer), layer))
    else:  # leave-out: all layers, and all but the given ones, at each level
        kept = sorted(set(every) - set(request.leave_out or []))
        if not kept:
            raise VditscopeError("--leave-out removes every layer")
        label = "all-but-" + ",".join(map(str, sorted(set(request.leave_out or []))))
        for level in request.levels:
            for tau in request.temperatures:
                variants.append((_edit(request, level, tau, None), "all", -1))
                variants.append((_edit(request, level, tau, set(kept)), label, -1))
    return [
        Cell(edit=edit, layers=label, layer=layer, prompt_index=p, seed=int(seed))
        for edit, label, layer in variants
        for p in range(num_prompts)
        for seed in request.seeds
    ]


@dataclass(frozen=True)
class DenseJob:
    """The dense (unedited) generation a cell is scored against: frames and final latents."""

    prompt: str
    seed: int
    generation: dict[str, Any]

    def __call__(self, bench: Workbench) -> dict[str, torch.Tensor]:
        frames, latents = bench.generate(self.prompt, self.seed, self.generation)
        return {"frames": torch.from_numpy(frames).contiguous(), "latents": latents.float().contiguous()}


@dataclass(frozen=True)
class CellJob:
    """One cell: the edited generation, scored against its dense reference (the job's one input)."""

    cell: Cell
    prompt: str
    generation: dict[str, Any]
    request: SweepRequest

    def __call__(self, bench: Workbench, dense: dict[str, torch.Tensor]) -> dict[str, Any]:
        return _run_cell(bench.pipe, self.cell, self.prompt, self.generation, bench.device, dense, self.request)


def run_sweep(request: SweepRequest, progress: ProgressFn | None = None, executor: Executor | None = None) -> Path:
    """Compute every missing cell, then write sweep.parquet/.csv, figures, plan.json and report.html.

    The cells run on ``executor`` (default: the one ``request.executor`` names); this driver alone
    writes them, one file per cell, as their results arrive."""

    validate(request)
    executor = executor or executor_for(request.executor, request.address)
    model = request.model if request.model is not None else DEFAULT_MODEL
    model_dir = checked_model_dir(model)
    settings = model_settings(model_dir)
    prompts = list(request.prompts) or default_prompts(settings)[:2]
    generation = request.generation_kwargs(settings)
    total_steps = int(generation.get("num_inference_steps", 0)) or None
    if request.dense_first_steps:
        if total_steps is None or request.dense_first_steps >= total_steps:
            raise VditscopeError(f"--dense-first-steps {request.dense_first_steps} leaves no step to edit")
        request = _replace(request, steps=(request.dense_first_steps, total_steps))
    if request.steps is not None and total_steps is not None and request.steps[1] > total_steps:
        raise VditscopeError(
            f"step range {request.steps[0]}:{request.steps[1]} is outside the {total_steps}-step schedule"
        )
    check_generation(model_dir, generation, request.device, request.dtype, videos=len(prompts) * len(request.seeds),
                     executor=executor.name, offload=request.offload)  # fmt: skip
    spec = ModelSpec.of(model, request)
    output = OutputDir(
        request.out, f"sweep {request.mode}", files=SWEEP_FILES, inputs=[model_dir], overwrite=request.overwrite,
        resumable=True,
    )  # fmt: skip
    with output, executor.start(spec) as pool:
        facts = pool.facts
        cells = plan_cells(request, facts.self_layers, len(prompts))
        # heads are checked on the first edited call; a wrong index would silently edit nothing
        if (
            request.heads is not None
            and facts.heads is not None
            and any(not 0 <= h < facts.heads for h in request.heads)
        ):
            raise VditscopeError(f"head index out of range: the model has {facts.heads} heads")

        out = output.open()
        model_name = str(model_dir)
        started = time.perf_counter()
        finished = run_jobs(pool, cell_plan(out, cells, prompts, generation, model_name, request), progress)
        if progress:
            progress("writing the sweep table", len(cells), len(cells))
        table = pd.DataFrame(finished.results).reindex(columns=TABLE_COLUMNS)  # cells of earlier releases: gaps
        execution = {
            "executor": executor.name,
            "workers": pool.worker_summary() or "this process",
            "cells_computed": finished.computed,
            "retries": pool.retries,
        }
        _write_outputs(
            out, request, table, model_name, facts.family, prompts, generation, finished.reused,
            time.perf_counter() - started, execution,
        )  # fmt: skip
    return out


def cell_plan(
    out: Path, cells: list[Cell], prompts: list[str], generation: dict[str, Any], model: str, request: SweepRequest
) -> JobPlan:
    """The sweep as driver jobs: one per cell (its row, in ``cells/``), each needing the dense generation of
    its prompt and seed (in ``dense/``), computed once and shared by the cells that score against it."""
    jobs, dense = [], {}
    for cell in cells:
        prompt = prompts[cell.prompt_index]
        dense_key = _dense_key(prompt, cell.seed, generation, model)
        dense.setdefault(dense_key, Job(key=dense_key, task=DenseJob(prompt, cell.seed, generation)))
        label = f"{cell.layers} k/p={_level(cell.edit)} tau={cell.edit.temperature:g}"
        task = CellJob(cell, prompt, generation, request)
        jobs.append(Job(key=cell.key(prompt, generation, model), task=task, needs=(dense_key,), label=label))
    return JobPlan(jobs, CellStore(out / "cells"), dense, DenseStore(out / "dense"), noun="cells")


class CellStore:
    """The finished cells of a sweep: one JSON row per cell, written once, atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def has(self, key: str) -> bool:
        return (self.root / f"{key}.json").is_file()

    def load(self, key: str) -> dict[str, Any]:
        return json.loads((self.root / f"{key}.json").read_text())

    def save(self, key: str, row: dict[str, Any]) -> None:
        path = self.root / f"{key}.json"
        if path.is_file():  # never written twice: a cell's first result stands
            raise VditscopeError(f"cell {key} came back twice")
        write_atomic(path, lambda p: p.write_text(json.dumps(row, indent=1) + "\n"))


class DenseStore:
    """The dense references of a sweep (frames and final latents), one safetensors file per prompt and seed."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def has(self, key: str) -> bool:
        return (self.root / f"{key}.safetensors").is_file()

    def load(self, key: str) -> dict[str, torch.Tensor]:
        return load_file(str(self.root / f"{key}.safetensors"))

    def save(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        write_atomic(self.root / f"{key}.safetensors", lambda p: save_file(tensors, str(p)))


def _mass_kept(edit: AttentionEdit) -> float:
    """The p column: top-p mass or block mass kept, NaN for other methods."""
    if edit.top_p is not None:
        return edit.top_p
    return edit.block_mass if edit.block_mass is not None else float("nan")


def _level(edit: AttentionEdit) -> float | str:
    if edit.mask == "blocks":
        return _mass_kept(edit)
    if edit.mask is not None:
        return edit.mask
    return edit.top_p if edit.top_p is not None else edit.bottom_k


def _replace(request: SweepRequest, **changes: Any) -> SweepRequest:
    from dataclasses import replace

    return replace(request, **changes)


def _dense_key(prompt: str, seed: int, generation: dict, model: str) -> str:
    blob = json.dumps({"prompt": prompt, "seed": seed, "generation": generation, "model": model}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:20]


def _run_cell(
    pipe: Any, cell: Cell, prompt: str, generation: dict, device: str, dense: dict, request: SweepRequest
) -> dict[str, Any]:
    with intervene(pipe, [cell.edit], chunk_size=request.chunk_size) as session:
        frames, latents = generate(pipe, prompt, cell.seed, generation, device)
    edits = session.edit_table()
    reference = dense["frames"].numpy()
    return {
        "mode": request.mode,
        "scope": request.scope if request.mode == "sparsity" else "temperature",
        "method": request.method,
        "mask": cell.edit.mask or "",
        "layers": cell.layers,
        "layer": cell.layer,
        "k": cell.edit.bottom_k if request.method == "bottom-k" else float("nan"),
        "p": _mass_kept(cell.edit),
        "temperature": cell.edit.temperature,
        "prompt": prompt,
        "prompt_index": cell.prompt_index,
        "seed": cell.seed,
        "psnr": quality.psnr(frames, reference),
        "ssim": quality.ssim(frames, reference),
        "latent_mse": quality.latent_mse(latents, dense["latents"]),
        "lpips": quality.lpips(frames, reference),
        "sparsity": session.totals.sparsity,
        "mass_dropped": float(edits["mass_dropped"].mean()) if len(edits) else 0.0,
        "edited_sparsity": float(edits["entries_dropped"].mean()) if len(edits) else 0.0,
        "model_mass_dropped": session.totals.mass_dropped,
        "head_masks": head_masks(edits) if cell.edit.mask == "svg" else "",
    }


def _write_outputs(
    out: Path,
    request: SweepRequest,
    table: pd.DataFrame,
    model: str,
    family: str,
    prompts: list[str],
    generation: dict,
    reused: int,
    seconds: float,
    execution: dict[str, Any],
) -> None:
    from ..report.sweep_html import write_sweep_report

    write_atomic(out / "sweep.parquet", lambda p: table.to_parquet(p, index=False))
    write_atomic(out / "sweep.csv", lambda p: table.to_csv(p, index=False))
    plan = {}
    if request.mode == "sparsity":
        plan = sparsity_plan(table, request.psnr_target, request.steps, request.window)
    if plan:
        plan["source"] = str(out)
        write_atomic(out / "plan.json", lambda p: p.write_text(json.dumps(plan, indent=1) + "\n"))
    meta = {
        "model": model,
        "family": family,
        "mode": request.mode,
        "scope": request.scope,
        "method": request.method,
        "levels": list(request.levels),
        "temperatures": list(request.temperatures),
        "layers": list(request.layers) if request.layers is not None else None,
        "leave_out": list(request.leave_out) if request.leave_out is not None else None,
        "heads": list(request.heads) if request.heads is not None else None,
        "steps": list(request.steps) if request.steps is not None else None,
        "branches": list(request.branches) if request.branches is not None else None,
        "prompts": prompts,
        "seeds": [int(s) for s in request.seeds],
        "generation": generation,
        "cells": len(table),
        "cells_reused": reused,
        "seconds": round(seconds, 2),
        **execution,
        "notes": [] if quality.lpips_available() else [quality.LPIPS_NOTE],
    }
    write_atomic(out / "sweep.json", lambda p: p.write_text(json.dumps(meta, indent=1) + "\n"))
    write_atomic(out / "report.html", lambda p: write_sweep_report(p, meta, table, plan))


__all__ = [
    "PLAN_VERSION",
    "SweepRequest",
    "check_plan",
    "level_column",
    "load_plan",
    "plan_cells",
    "run_sweep",
    "sensitivity_table",
    "sparsity_plan",
]
