"""Evaluate a shapes text-to-video model: does it draw the prompted colour, moving the prompted way?

Generates held-out caption combinations (never seen in training), reads colour and motion back
from the frames (a confusion matrix per prompted direction), and measures with capture how much of a
video query's attention stays in its own frame, relative to the uniform share 1 / frames, per layer,
and the class of each head by the report's rule. ``caption_sensitivity`` says, without generating,
whether the model reads a caption word at all: how much its denoising loss on rendered clips rises
when the caption names the opposite direction (or another colour) — it moves long before the
accuracy of generated clips does, so it shows whether a training run is on track.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..adapters.loading import load_pipeline
from ..capture import capture
from ..data import shapes
from ..store import write_atomic
from ..tiny import TinyConfig
from .objectives import encode_prompts
from .recipes import RECIPES, denoising_loss
from .tiny import rendered_batch


@dataclass
class TinyEvaluation:
    """Accuracies over the generated clips and the same-frame attention ratio per layer."""

    count: int
    color_accuracy: float
    direction_accuracy: float
    same_frame_ratio: dict[int, float]
    confusion: dict[str, dict[str, int]] = field(default_factory=dict)  # prompted -> measured -> clips
    head_classes: dict[str, int] = field(default_factory=dict)  # class -> heads (captured clips, cond branch)
    # layer -> the largest mass any of its heads puts on the query's own position in the other frames (the mass the
    # temporal class reads; captured clips, cond branch)
    same_position_max: dict[int, float] = field(default_factory=dict)
    sensitivity: dict[str, float] = field(default_factory=dict)  # caption_sensitivity's loss increases

    def direction_accuracy_of(self, direction: str) -> float:
        """Share of the clips prompted to move ``direction`` that did (NaN when none was prompted)."""
        row = self.confusion.get(direction, {})
        total = sum(row.values())
        return row.get(direction, 0) / total if total else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "color_accuracy": self.color_accuracy,
            "direction_accuracy": self.direction_accuracy,
            "direction_accuracy_per_direction": {d: self.direction_accuracy_of(d) for d in self.confusion},
            "same_frame_ratio": {str(k): v for k, v in self.same_frame_ratio.items()},
            "direction_confusion": self.confusion,
            "head_classes": self.head_classes,
            "same_position_max": {str(k): v for k, v in self.same_position_max.items()},
            "caption_sensitivity": self.sensitivity,
        }

    def write_json(self, path: Path) -> None:
        """The results as JSON at ``path`` (checked by the caller with ``checked_output_file``), atomically."""
        text = json.dumps({"written_by": "vditscope eval-tiny", **self.to_dict()}, indent=1) + "\n"
        write_atomic(path, lambda target: target.write_text(text))


def evaluate(
    pipe: Any,
    generation: dict[str, Any],
    *,
    count: int = 40,
    split_seed: int = 0,
    captured: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> TinyEvaluation:
    """Generate ``count`` held-out combinations (seed i for the i-th) and score them."""
    _, held_out = shapes.split_specs(split_seed, held_out=max(count, 40))
    specs = held_out[:count]
    color_ok = direction_ok = 0
    measured_as = [*shapes.DIRECTIONS, shapes.NO_SHAPE]  # a clip with no shape has no direction either
    confusion: dict[str, dict[str, int]] = {d: {e: 0 for e in measured_as} for d in shapes.DIRECTIONS}
    same_frame: dict[int, list[float]] = {}
    tables = []
    for i, spec in enumerate(specs):
        generator = torch.Generator().manual_seed(i)
        if i < captured:
            with capture(pipe, top_mass="off", cross_attention=False, keep_maps=False) as cap:
                frames = pipe(prompt=spec.caption, generator=generator, output_type="np", **generation).frames[0]
            tables.append(cap.table())
            for record in cap.records:
                if record.branch == "cond" and record.layout is not None:
                    uniform = 1.0 / record.layout.frames
                    same_frame.setdefault(record.layer, []).append(float(np.mean(record.same_frame_mass)) / uniform)
        else:
            frames = pipe(prompt=spec.caption, generator=generator, output_type="np", **generation).frames[0]
        measured = shapes.measure_clip(np.asarray(frames, dtype=np.float32), spec.background)
        color_ok += measured.color == spec.color
        direction_ok += measured.direction == spec.direction
        confusion[spec.direction][measured.direction] += 1
        if progress:
            progress(i + 1, len(specs))
    heads = captured_heads(tables)
    return TinyEvaluation(
        count=len(specs),
        color_accuracy=color_ok / len(specs),
        direction_accuracy=direction_ok / len(specs),
        same_frame_ratio={layer: float(np.mean(v)) for layer, v in sorted(same_frame.items())},
        confusion=confusion,
        head_classes=head_class_counts(heads),
        same_position_max=largest_same_position_mass(heads),
    )


def confusion_table(result: TinyEvaluation) -> Any:
    """The direction confusion matrix as a table (pandas): one row per prompted direction, a column per
    measured direction ("none": no shape found), and that direction's accuracy."""
    import pandas as pd

    rows = [{"prompted": d, **row, "accuracy": result.direction_accuracy_of(d)} for d, row in result.confusion.items()]
    return pd.DataFrame(rows)


def captured_heads(tables: list[Any]) -> Any:
    """The report's per-head table (``analyses.structure.classify_heads``: masses and class) over captured tables."""
    import pandas as pd

    from ..analyses.structure import classify_heads

    return classify_heads(pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=["kind", "branch"]))


def head_class_counts(heads: Any) -> dict[str, int]:
    """Heads per class (the report's rule) in ``captured_heads``' table."""
    return {name: int(count) for name, count in heads["class"].value_counts().sort_index().items()}


def largest_same_position_mass(heads: Any) -> dict[int, float]:
    """Per layer, the largest mean mass a head puts on the query's own position in the other frames (what the
    report's rule calls temporal from ``TEMPORAL_MASS``) in ``captured_heads``' table."""
    return {int(layer): float(mass) for layer, mass in heads.groupby("layer")["same_position_mass"].max().items()}


OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}


@torch.no_grad()
def caption_sensitivity(
    pipe: Any,
    family: str,
    generation: dict[str, Any],
    *,
    clips: int = 16,
    draws: int = 4,
    seed: int = 0,
    shift: float = 3.0,
    style: shapes.ClipStyle = shapes.DEFAULT_STYLE,
) -> dict[str, float]:
    """Relative rise of the denoising loss on ``clips`` rendered held-out clips when their caption names the
    opposite direction ("direction") or the next colour ("colour"), same noise and noise levels for every
    caption (``draws`` draws each, noise levels shifted by the training ``shift``), clips in the ``style`` the
    model trained on; 0 means the model ignores the word."""
    recipe = RECIPES.get(family)
    if recipe is None:
        return {}
    _, held_out = shapes.split_specs(0, held_out=max(clips, 40))
    rng = np.random.default_rng(seed)
    size, frames = int(generation["height"]), int(generation["num_frames"])
    specs = held_out[:clips]
    latents = pipe.vae.encode(rendered_batch(specs, frames, size, rng, style)).latent_dist.sample()
    colors = list(shapes.COLORS)
    captions = {
        "true": [s.caption for s in specs],
        "direction": [replace(s, direction=OPPOSITE[s.direction]).caption for s in specs],
        "colour": [replace(s, color=colors[(colors.index(s.color) + 1) % len(colors)]).caption for s in specs],
    }
    length = generation.get("max_sequence_length")
    losses: dict[str, float] = {}
    for name, texts in captions.items():
        embeds = encode_prompts(pipe, texts, "cpu", length)
        losses[name] = sum(
            float(denoising_loss(recipe, pipe, latents, embeds, torch.Generator().manual_seed(seed * 1000 + d), shift))
            for d in range(draws)
        )
    return {name: losses[name] / losses["true"] - 1 for name in ("direction", "colour")}


def evaluate_directory(model_dir: Path, **kwargs: Any) -> TinyEvaluation:
    """Evaluate a pipeline directory that has a vditscope.json with generation settings."""
    pipe, adapter, directory = load_pipeline(model_dir)
    settings = json.loads((Path(directory) / "vditscope.json").read_text())
    generation = settings["generation"]
    result = evaluate(pipe, generation, **kwargs)
    training = TinyConfig.from_saved(settings.get("training", {}))
    result.sensitivity = caption_sensitivity(
        pipe, adapter.family, generation, shift=training.shift, style=training.clip_style()
    )
    return result
