"""Train the small text-to-video models that ship with vditscope, on the shapes data set.

The family-specific parts (which pipeline, which loss) are recipes in ``recipes.py``; this
module owns the data stream, the optimizer, checkpoints (safetensors, atomic) and resuming:
a run stopped by a time limit, Ctrl-C or a kill continues from its last checkpoint and reaches
the same weights as an uninterrupted run.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..adapters.loading import quiet_loading
from ..data import shapes
from ..errors import VditscopeError
from ..store import OutputDir, files_of, write_json
from ..tiny import RECIPE_MODELS, TinyConfig
from .checkpoint import (
    CHECKPOINT,
    STATE,
    load_checkpoint,
    optimizer_step,
    optimizer_tensors,
    restore_optimizer,
    save_checkpoint,
)
from .clips import shapes_training
from .recipes import denoising_loss, recipe_for

TRAIN_FILES = files_of("train-tiny")  # what a train-tiny run directory holds

__all__ = ["CHECKPOINT", "STATE", "TinyConfig", "build_pipeline", "export_pipeline", "load_trained_pipeline", "train"]


def build_tokenizer() -> Any:
    """Word-level T5-style tokenizer over the caption words (ids 0-2: pad, eos, unk), built in code: the
    template's literal words (its placeholders removed, so that "background", a placeholder's name and a
    literal word, is kept) and the vocabulary's words. The shipped models keep the tokenizer they were trained
    with (saved beside their weights)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    literal = re.sub(r"\{\w+\}", " ", shapes.CAPTION).split()
    words = list(dict.fromkeys([*literal, *(w for group in shapes.vocabulary().values() for w in group)]))
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for word in words:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        padding_side="right",
        truncation_side="right",
        model_max_length=512,
    )


def clip_style(name: str) -> shapes.ClipStyle:
    """The clip style ``train-tiny --clips NAME`` trains on (VditscopeError naming the styles)."""
    if name not in shapes.CLIP_STYLES:
        raise VditscopeError(f"unknown clip style {name}; choose one of {', '.join(shapes.CLIP_STYLES)}")
    return shapes.CLIP_STYLES[name]


def recipe_config(
    family: str,
    *,
    frames: int | None = None,
    clips: str | None = None,
    rotary: bool | None = None,
    temporal_factor: int | None = None,
    qk_norm_gain: float | None = None,
) -> TinyConfig:
    """What ``train-tiny --family FAMILY`` trains: the configuration its shipped model recorded (``RECIPE_MODELS``:
    tiny-cogvideox-motion's for CogVideoX, tiny-wan's for Wan), with the frame count, clip style (a
    ``shapes.CLIP_STYLES`` name), video frames per latent frame, CogVideoX's rotary positions and the q and k
    norms' initial gain given instead (VditscopeError on a bad one)."""
    if family not in RECIPE_MODELS:
        raise VditscopeError(f"unknown model family {family}: train-tiny knows {', '.join(RECIPE_MODELS)}")
    if family != "cogvideox" and rotary:
        raise VditscopeError(f"--rotary is for CogVideoX; {family} has rotary positions of its own")
    if temporal_factor is not None and temporal_factor not in (1, 2):
        raise VditscopeError(f"--temporal-factor must be 1 or 2 video frames per latent frame, got {temporal_factor}")
    if qk_norm_gain is not None and not qk_norm_gain > 0:
        raise VditscopeError(f"--qk-norm-gain must be positive, got {qk_norm_gain}")
    config = shapes_training(RECIPE_MODELS[family])
    config = replace(
        config,
        frames=frames if frames is not None else config.frames,
        rotary=rotary if rotary is not None else config.rotary,
        temporal_factor=temporal_factor if temporal_factor is not None else config.temporal_factor,
        qk_norm_gain=qk_norm_gain if qk_norm_gain is not None else config.qk_norm_gain,
    )
    step = config.temporal_factor
    if config.frames < 3 or (config.frames - 1) % step:
        raise VditscopeError(
            f"--frames must be 1 + {step} x (latent frames - 1) with at least 2 latent frames at "
            f"{step} video frame{'s' if step > 1 else ''} per latent frame, got {config.frames}"
        )
    return config.with_style(clip_style(clips)) if clips is not None else config


def build_pipeline(config: TinyConfig) -> Any:
    """A freshly initialized pipeline of the configured family (deterministic from config.seed)."""
    pipe = recipe_for(config.family).build_pipeline(config, build_tokenizer())
    pipe.set_progress_bar_config(disable=True)
    if config.qk_norm_gain != 1.0:
        with torch.no_grad():
            for norm in qk_norms(pipe.transformer):
                if getattr(norm, "weight", None) is not None:
                    norm.weight.fill_(config.qk_norm_gain)
    return pipe


def rendered_batch(
    specs: list[shapes.ClipSpec],
    frames: int,
    size: int,
    rng: np.random.Generator,
    style: shapes.ClipStyle = shapes.DEFAULT_STYLE,
) -> torch.Tensor:
    """Videos (B, 3, F, H, W) in [-1, 1] of the clips ``specs`` rendered with ``rng``: what the VAE encodes."""
    videos = np.stack([shapes.render_clip(s, frames=frames, size=size, rng=rng, style=style) for s in specs])
    return torch.from_numpy(videos).permute(0, 4, 1, 2, 3) * 2 - 1


def make_batch(config: TinyConfig, step: int, specs: list[shapes.ClipSpec]) -> tuple[torch.Tensor, list[str]]:
    """Videos (B, 3, F, H, W) in [-1, 1] and captions for one step; deterministic in (seed, step)."""
    videos, captions, _ = make_grouped_batch(config, step, specs)
    return videos, captions


def make_grouped_batch(
    config: TinyConfig, step: int, specs: list[shapes.ClipSpec]
) -> tuple[torch.Tensor, list[str], list[int] | None]:
    """``make_batch``'s videos and captions, and the sizes of the batch's direction sets in order (None without
    ``config.direction_sets``, where every clip is drawn on its own)."""
    rng = np.random.default_rng([config.seed, step])
    drawn = shapes.sample_specs(config.batch, rng, specs)
    if config.direction_sets:
        batch_specs, tensor, groups = _direction_sets(config, drawn, set(specs), rng)
    else:
        batch_specs, groups = drawn, None
        tensor = rendered_batch(drawn, config.frames, config.size, rng, config.clip_style())
    captions = [s.caption if rng.random() >= config.caption_dropout else "" for s in batch_specs]
    return tensor, captions, groups


def _direction_sets(
    config: TinyConfig, drawn: list[shapes.ClipSpec], allowed: set[shapes.ClipSpec], rng: np.random.Generator
) -> tuple[list[shapes.ClipSpec], torch.Tensor, list[int]]:
    """Each drawn clip with the same clip moving in every other direction that ``allowed`` holds, all rendered
    from the same draws (place, travel, pattern, flicker), until the batch is full: specs, videos, set sizes."""
    batch_specs, clips, groups = [], [], []
    style = config.clip_style()
    for spec in drawn:
        members = [m for d in shapes.DIRECTIONS if (m := replace(spec, direction=d)) in allowed]
        members = members[: config.batch - len(batch_specs)]
        state = rng.bit_generator.state
        for member in members:
            rng.bit_generator.state = state
            clips.append(rendered_batch([member], config.frames, config.size, rng, style))
        batch_specs += members
        groups.append(len(members))
        if len(batch_specs) == config.batch:
            break
    return batch_specs, torch.cat(clips), groups


def _trainable(pipe: Any) -> dict[str, torch.nn.Module]:
    return {"transformer": pipe.transformer, "text_encoder": pipe.text_encoder}


QK_NORMS = ("norm_q", "norm_k")  # the attention modules' q and k norms, in diffusers' Wan and CogVideoX alike


def parameter_groups(pipe: Any, config: TinyConfig) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: everything trainable at the base rate and, when ``qk_norm_lr_scale`` is
    not 1, the q and k norms' parameters in a group of their own at that multiple (``optimizer_step``'s
    ``lr_scale``). One group otherwise, so that a run's optimizer state keeps its order."""
    params = [p for module in _trainable(pipe).values() for p in module.parameters()]
    if config.qk_norm_lr_scale == 1.0:
        return [{"params": params}]
    in_norms = {id(p) for module in _trainable(pipe).values() for norm in qk_norms(module) for p in norm.parameters()}
    return [
        {"params": [p for p in params if id(p) not in in_norms]},
        {"params": [p for p in params if id(p) in in_norms], "lr_scale": config.qk_norm_lr_scale},
    ]


def qk_norms(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The attention's q and k norm modules inside ``module`` (named as ``QK_NORMS`` says)."""
    return [sub for name, sub in module.named_modules() if name.rsplit(".", 1)[-1] in QK_NORMS]


def _load_weights(pipe: Any, tensors: dict[str, torch.Tensor]) -> None:
    """Put the checkpoint's model tensors back into the trainable modules."""
    for name, module in _trainable(pipe).items():
        prefix = f"model/{name}/"
        module.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})


def _save_checkpoint(
    directory: Path, pipe: Any, optimizer: torch.optim.Optimizer, step: int, config: TinyConfig, history: list[dict]
) -> None:
    """Weights and optimizer moments as safetensors, the rest as JSON; written atomically."""
    tensors = {
        f"model/{name}/{key}": value.detach().clone()
        for name, module in _trainable(pipe).items()
        for key, value in module.state_dict().items()
    }
    tensors.update(optimizer_tensors(optimizer))
    save_checkpoint(directory, tensors, {"step": step, "config": asdict(config), "history": history})


def train(
    out: Path,
    config: TinyConfig,
    *,
    steps: int,
    minutes: float | None = None,
    checkpoint_every: int = 100,
    progress: Callable[[int, int, float], None] | None = None,
    overwrite: bool = False,
) -> Path:
    """Train (or resume) in ``out``; returns the directory. Stops at ``steps`` or after ``minutes``.
    ``out`` is new or an earlier run of train-tiny (the output policy, ``store/output.py``)."""
    with OutputDir(out, "train-tiny", files=TRAIN_FILES, overwrite=overwrite, resumable=True) as output:
        output.open()
        return _train(output.path, config, steps, minutes, checkpoint_every, progress)


def _train(
    out: Path,
    config: TinyConfig,
    steps: int,
    minutes: float | None,
    checkpoint_every: int,
    progress: Callable[[int, int, float], None] | None,
) -> Path:
    recipe = recipe_for(config.family)
    pipe = build_pipeline(config)
    train_specs, _ = shapes.split_specs(config.seed)
    groups = parameter_groups(pipe, config)
    params = [p for group in groups for p in group["params"]]
    optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=0.01, betas=(0.9, 0.98))
    step, history = 0, []
    loaded = load_checkpoint(out)
    if loaded is not None:
        tensors, state = loaded
        if TinyConfig.from_saved(state["config"]) != config:
            raise ValueError(f"{out} holds a run with another configuration; use another directory")
        step, history = int(state["step"]), list(state["history"])
        _load_weights(pipe, tensors)
        restore_optimizer(optimizer, tensors, step)
    for module in _trainable(pipe).values():
        module.train()
    started = time.perf_counter()
    losses: list[float] = []
    while step < steps:
        videos, captions, groups = make_grouped_batch(config, step, train_specs)
        with torch.no_grad():
            latents = pipe.vae.encode(videos).latent_dist.sample()
        embeds, _ = pipe.encode_prompt(
            captions,
            do_classifier_free_guidance=False,
            max_sequence_length=config.max_text_tokens,
            device=torch.device("cpu"),
        )
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        loss = denoising_loss(
            recipe, pipe, latents, embeds, generator, config.shift, groups=groups, contrast=config.set_contrast
        )
        lr = config.lr * min(1.0, (step + 1) / config.warmup) * (0.5 * (1 + math.cos(math.pi * min(step / steps, 1))))
        losses.append(optimizer_step(optimizer, loss, params, max(lr, config.lr * 0.05)))
        step += 1
        if progress:
            progress(step, steps, float(np.mean(losses[-50:])))
        timed_out = minutes is not None and time.perf_counter() - started > minutes * 60
        if step % checkpoint_every == 0 or step == steps or timed_out:
            history.append({"step": step, "loss": float(np.mean(losses[-checkpoint_every:]))})
            _save_checkpoint(out, pipe, optimizer, step, config, history)
        if timed_out:
            break
    for module in _trainable(pipe).values():
        module.eval()
    return out


def load_trained_pipeline(run_dir: Path) -> Any:
    """The pipeline of a training run directory, at its last checkpoint."""
    loaded = load_checkpoint(Path(run_dir))
    if loaded is None:
        raise FileNotFoundError(f"{run_dir} holds no training checkpoint")
    tensors, state = loaded
    config = TinyConfig.from_saved(state["config"])
    pipe = build_pipeline(config)
    _load_weights(pipe, tensors)
    for module in _trainable(pipe).values():
        module.eval()
    return pipe, config


def export_pipeline(
    run_dir: Path, target: Path, metrics: dict[str, Any] | None = None, overwrite: bool = False
) -> Path:
    """Save the trained pipeline as a diffusers directory with vditscope.json (generation, vocabulary)."""
    with OutputDir(target, "train-tiny export", inputs=[run_dir], overwrite=overwrite) as output:
        pipe, config = load_trained_pipeline(run_dir)
        with output.staging() as staging, quiet_loading():  # no library progress bars in the command's output
            pipe.save_pretrained(staging, safe_serialization=True)
            write_json(staging / "vditscope.json", _export_info(config, metrics))
    return output.path


def _export_info(config: TinyConfig, metrics: dict[str, Any] | None) -> dict[str, Any]:
    """vditscope.json of an exported shapes pipeline."""
    return {
        "generation": config.generation(),
        "vocabulary": shapes.vocabulary(),
        "caption": shapes.CAPTION,
        "trained": True,
        "training": asdict(config),
        "metrics": metrics or {},
    }
