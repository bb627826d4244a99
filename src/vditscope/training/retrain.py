"""Retrain degenerate layers: re-initialize chosen transformer blocks and train only those.

The paper (arXiv 2504.10317) finds attention sinks and sparsity-sensitive attention in the last
blocks of video diffusion transformers and shows that re-initializing and retraining those
blocks removes the sinks. ``retrain`` does that for a pipeline of a family with a training recipe
(``recipes.py``), by distillation from the frozen original model or by flow matching on videos.
It checkpoints and resumes like the tiny-model trainer and ends with a loadable pipeline.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from ..adapters.loading import load_pipeline, quiet_loading, resolve_device, resolve_model_dir
from ..adapters.settings import DEFAULT_PROMPTS, model_settings
from ..analyses.options import checked_seed
from ..analyses.retrain_study import RetrainStudyRequest
from ..errors import VditscopeError
from ..progress import LossProgressFn
from ..store import OutputDir, files_of, write_json
from ..tiny import DEFAULT_MODEL
from .checkpoint import load_checkpoint, optimizer_step, optimizer_tensors, restore_optimizer, save_checkpoint
from .clips import find_clips
from .loss_plot import write_loss_plot
from .objectives import DistillObjective, FlowObjective, encode_clips, encode_prompts, vocabulary_prompts
from .recipes import RECIPES, Recipe

# what a retrain run directory holds: checkpoint, loss plot, the retrained pipeline, the before/after study
RETRAIN_FILES = files_of("retrain")

Mode = Literal["distill", "flow"]
MODES: tuple[Mode, ...] = ("distill", "flow")


@dataclass
class RetrainRequest:
    """What to retrain and how; ``blocks`` index the transformer blocks (negative from the end).

    A run is identified by everything but ``checkpoint_every``, ``out`` and ``device``: rerunning
    the same request resumes it, another request on the same ``out`` is refused.
    """

    model: str | Path = DEFAULT_MODEL
    blocks: Sequence[int] = (-1,)
    mode: Mode = "distill"
    data: Path | None = None  # flow mode: folder of *.mp4 / *.gif with same-stem .txt captions
    prompts: Sequence[str] = ()  # distill mode: () = the model's caption vocabulary, else two defaults
    steps: int = 300
    lr: float = 3e-4
    batch: int = 2
    seed: int = 0
    checkpoint_every: int = 50
    out: Path = Path("runs/retrain")
    overwrite: bool = False  # out may be a non-empty folder (nothing of yours is removed)
    device: str = "auto"
    # training video size; None = the model's vditscope.json generation settings
    height: int | None = None
    width: int | None = None
    num_frames: int | None = None

    def check(self) -> None:
        """Reject settings that cannot run, before anything is loaded or written."""
        if self.mode not in MODES:
            raise VditscopeError(f"unknown retraining mode {self.mode}; choose one of {', '.join(MODES)}")
        if self.mode == "flow" and self.data is None:
            raise VditscopeError("flow mode needs a folder of captioned videos (data)")
        if self.mode == "flow":
            find_clips(Path(str(self.data)))  # a missing or empty folder fails before the model loads
        if self.mode == "distill" and self.data is not None:
            raise VditscopeError("distill mode uses no videos; pass data only in flow mode")
        if not self.blocks:
            raise VditscopeError("choose at least one block to retrain")
        for name in ("steps", "batch", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                raise VditscopeError(f"{name} must be positive, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise VditscopeError(f"the learning rate must be a positive number, got {self.lr}")
        checked_seed(self.seed)
        if any(not str(p).strip() for p in self.prompts):
            raise VditscopeError("prompts must not be empty (the empty prompt is always trained)")


def resolve_blocks(blocks: Sequence[int], count: int) -> list[int]:
    """Sorted distinct block indices in 0..count-1; negative indices count from the end."""
    resolved = set()
    for index in blocks:
        if not -count <= int(index) < count:
            raise VditscopeError(f"block {index} is out of range: the model has {count} blocks (0..{count - 1})")
        resolved.add(int(index) % count)
    return sorted(resolved)


def reinitialize(model: nn.Module, blocks: list[nn.Module], fresh_blocks: list[nn.Module], chosen: list[int]) -> None:
    """Copy the freshly initialized blocks ``chosen`` of ``fresh_blocks`` into ``blocks`` (in place)."""
    with torch.no_grad():
        for i in chosen:
            blocks[i].load_state_dict(fresh_blocks[i].state_dict())


def fresh_model(model: nn.Module, seed: int) -> nn.Module:
    """A new transformer of the same class and config, initialized by its own constructors from ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return type(model).from_config(model.config)


def block_prefixes(model: nn.Module, blocks: list[nn.Module], chosen: list[int]) -> list[str]:
    """The qualified module names (``blocks.3``) of the chosen blocks inside ``model``."""
    names = {id(module): name for name, module in model.named_modules()}
    return [names[id(blocks[i])] for i in chosen]


def block_tensors(blocks: list[nn.Module], chosen: list[int], prefixes: list[str]) -> dict[str, torch.Tensor]:
    """Copies of the chosen blocks' parameters and buffers, named as in the whole model's state dict."""
    return {
        f"{prefix}.{key}": value.detach().clone()
        for i, prefix in zip(chosen, prefixes, strict=True)
        for key, value in blocks[i].state_dict().items()
    }


def learning_rate(request: RetrainRequest, step: int) -> float:
    """Linear warm-up over the first tenth (at most 50 steps), then a cosine decay to a tenth."""
    warmup = max(1, min(50, request.steps // 10))
    decay = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / request.steps))
    return request.lr * min(1.0, (step + 1) / warmup) * decay


def retrain(request: RetrainRequest, progress: LossProgressFn | None = None) -> Path:
    """Re-initialize and train the chosen blocks (or resume); returns the pipeline directory out/model.

    ``progress(step, total, loss)`` is called after every optimizer step with that step's loss.
    """

    request.check()
    model_dir = resolve_model_dir(request.model)
    output = OutputDir(
        request.out, "retrain", files=RETRAIN_FILES, inputs=[model_dir, request.data], overwrite=request.overwrite,
        resumable=True,
    )  # fmt: skip
    with output:
        return _retrain(request, output, model_dir, progress)


def _retrain(request: RetrainRequest, output: OutputDir, model_dir: Path, progress: LossProgressFn | None) -> Path:

    device = resolve_device(request.device)
    pipe, adapter, model_dir = load_pipeline(model_dir, device=device)
    recipe = _recipe(adapter.family)
    if getattr(pipe, "transformer_2", None) is not None:
        raise VditscopeError("retraining a pipeline with two transformers (Wan 2.2 experts) is not supported")
    transformer = pipe.transformer
    blocks = adapter.blocks(transformer)
    chosen = resolve_blocks(request.blocks, len(blocks))
    settings = model_settings(model_dir)
    size = _training_size(request, settings)
    run = {
        "model": str(model_dir.resolve()),
        "family": adapter.family,
        "blocks": chosen,
        "mode": request.mode,
        "data": str(Path(request.data).resolve()) if request.data is not None else None,
        "prompts": list(request.prompts),
        "steps": request.steps,
        "lr": request.lr,
        "batch": request.batch,
        "seed": request.seed,
        "size": list(size),
    }
    out = output.path
    loaded = load_checkpoint(out)
    if loaded is not None and loaded[1].get("run") != run:
        saved = loaded[1].get("run") or {}
        differ = ", ".join(k for k in run if saved.get(k) != run[k]) or "format"
        raise VditscopeError(f"{out} holds a retraining run with other settings ({differ}); choose another out")

    pipe.set_progress_bar_config(disable=True)
    for component in pipe.components.values():
        if isinstance(component, nn.Module):
            component.requires_grad_(False)
    prefixes = block_prefixes(transformer, blocks, chosen)
    teacher = block_tensors(blocks, chosen, prefixes) if request.mode == "distill" else {}
    reinitialize(transformer, blocks, adapter.blocks(fresh_model(transformer, request.seed)), chosen)
    objective = _objective(request, pipe, recipe, settings, size, device, teacher, blocks[: chosen[0]])

    params = [p for i in chosen for p in blocks[i].parameters()]
    for param in params:
        param.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=request.lr, weight_decay=0.01, betas=(0.9, 0.98))
    step, losses = 0, []
    if loaded is not None:
        tensors, state = loaded
        step, losses = int(state["step"]), [float(v) for v in state["losses"]]
        _load_blocks(blocks, chosen, prefixes, tensors)
        restore_optimizer(optimizer, tensors, step)
    output.open()
    transformer.eval()  # no dropout: every step is a function of (seed, step) alone
    while step < request.steps:
        generator = torch.Generator().manual_seed(request.seed * 1_000_003 + step)
        loss = objective.loss(generator)
        losses.append(optimizer_step(optimizer, loss, params, learning_rate(request, step)))
        if not math.isfinite(losses[-1]):
            raise VditscopeError(
                f"retraining diverged at step {step + 1} (loss {losses[-1]}); lower --lr (the last checkpoint is kept)"
            )
        step += 1
        if step % request.checkpoint_every == 0 or step == request.steps:
            tensors = {f"model/{k}": v for k, v in block_tensors(blocks, chosen, prefixes).items()}
            state = {"step": step, "run": run, "losses": losses}
            save_checkpoint(out, {**tensors, **optimizer_tensors(optimizer)}, state)
        if progress:
            progress(step, request.steps, losses[-1])
    for param in params:
        param.requires_grad_(False)
    write_loss_plot(out / "loss.png", losses, f"retraining blocks {chosen} ({request.mode})")
    return _export(pipe, settings, out / "model", run, losses)


def _objective(
    request: RetrainRequest,
    pipe: Any,
    recipe: Recipe,
    settings: dict[str, Any],
    size: tuple[int, int, int],
    device: str,
    teacher: dict[str, torch.Tensor],
    prefix: list[nn.Module],
) -> DistillObjective | FlowObjective:
    """The request's loss, with its prompt (or caption) embeddings and, in flow mode, its encoded videos."""

    shift = _noise_shift(pipe, settings)
    max_length = settings.get("generation", {}).get("max_sequence_length")
    empty = encode_prompts(pipe, [""], device, max_length)
    if request.mode == "distill":
        prompts = list(request.prompts) or vocabulary_prompts(settings) or list(DEFAULT_PROMPTS)
        embeds = encode_prompts(pipe, prompts, device, max_length)
        shape = recipe.latent_shape(pipe, request.batch, *size)
        return DistillObjective(pipe, recipe, teacher, embeds, empty, shape, shift, prefix)
    latents, captions = encode_clips(pipe, Path(str(request.data)), size, device)
    embeds = encode_prompts(pipe, captions, device, max_length)
    return FlowObjective(pipe, recipe, latents, embeds, empty, request.batch, shift)


def _recipe(family: str) -> Recipe:
    if family not in RECIPES:
        raise VditscopeError(f"retraining supports the {', '.join(RECIPES)} families; {family} has no recipe yet")
    return RECIPES[family]


def _training_size(request: RetrainRequest, settings: dict[str, Any]) -> tuple[int, int, int]:
    """(height, width, num_frames) of the training videos: the request's, else the model's generation size."""
    generation = settings.get("generation", {})
    size = []
    for key in ("height", "width", "num_frames"):
        value = getattr(request, key) or generation.get(key)
        if value is None:
            raise VditscopeError(f"the model has no vditscope.json generation size; pass {key}")
        if int(value) < 1:
            raise VditscopeError(f"{key} must be positive, got {value}")
        size.append(int(value))
    return size[0], size[1], size[2]


def _noise_shift(pipe: Any, settings: dict[str, Any]) -> float:
    """The noise-level shift of training: the model's own training shift, else its scheduler's, else 1."""
    trained = settings.get("training", {}).get("shift")
    if trained is not None:
        return float(trained)
    config = pipe.scheduler.config
    return float(config.get("flow_shift") or config.get("shift") or 1.0)


def _load_blocks(blocks: list[nn.Module], chosen: list[int], prefixes: list[str], tensors: dict[str, Any]) -> None:
    """Put the checkpoint's weights of the chosen blocks back (strict: every tensor must be there)."""
    with torch.no_grad():
        for i, prefix in zip(chosen, prefixes, strict=True):
            start = f"model/{prefix}."
            blocks[i].load_state_dict({k[len(start) :]: v for k, v in tensors.items() if k.startswith(start)})


def _export(pipe: Any, settings: dict[str, Any], target: Path, run: dict[str, Any], losses: list[float]) -> Path:
    """Save the pipeline with the retrained transformer and a vditscope.json that says what was retrained."""
    tail = max(1, min(10, len(losses) // 10))
    info = dict(settings)
    previous = info.pop("retrained", None)
    info["retrained"] = {
        "source": run["model"],
        "blocks": run["blocks"],
        "mode": run["mode"],
        "steps": len(losses),
        "lr": run["lr"],
        "batch": run["batch"],
        "seed": run["seed"],
        "initial_loss": float(np.mean(losses[:tail])),
        "final_loss": float(np.mean(losses[-tail:])),
        **({"previous": previous} if previous else {}),
    }
    with OutputDir(target, "retrain export") as output, output.staging() as staging, quiet_loading():
        pipe.save_pretrained(staging, safe_serialization=True)
        write_json(staging / "vditscope.json", info)
    return output.path


def study_request(
    request: RetrainRequest, model_dir: Path, levels: list[float], num_inference_steps: int | None
) -> RetrainStudyRequest:
    """The before/after study of a finished retraining: the original model against the retrained pipeline in
    ``model_dir``, on the retrained blocks (read back from its vditscope.json) and the run's first two prompts."""
    info = json.loads((model_dir / "vditscope.json").read_text()).get("retrained", {})
    return RetrainStudyRequest(
        original=request.model, retrained=model_dir, layers=info.get("blocks", []), out=request.out,
        prompts=request.prompts[:2], levels=levels, device=request.device, num_inference_steps=num_inference_steps,
    )  # fmt: skip
