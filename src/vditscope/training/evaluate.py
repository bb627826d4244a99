"""Evaluate a shapes text-to-video model: does it draw the prompted colour, moving the prompted way?

Generates held-out caption combinations (never seen in training), reads colour and motion back
from the frames, and measures with capture how much of a video query's attention stays in its
own frame, relative to the uniform share 1 / frames, per layer.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..adapters.loading import load_pipeline
from ..capture import capture
from ..data import shapes
from ..store import write_atomic


@dataclass
class TinyEvaluation:
    """Accuracies over the generated clips and the same-frame attention ratio per layer."""

    count: int
    color_accuracy: float
    direction_accuracy: float
    same_frame_ratio: dict[int, float]
    confusion: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "color_accuracy": self.color_accuracy,
            "direction_accuracy": self.direction_accuracy,
            "same_frame_ratio": {str(k): v for k, v in self.same_frame_ratio.items()},
            "direction_confusion": self.confusion,
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
    confusion: dict[str, dict[str, int]] = {d: {e: 0 for e in shapes.DIRECTIONS} for d in shapes.DIRECTIONS}
    same_frame: dict[int, list[float]] = {}
    for i, spec in enumerate(specs):
        generator = torch.Generator().manual_seed(i)
        if i < captured:
            with capture(pipe, top_mass="off", cross_attention=False, keep_maps=False) as cap:
                frames = pipe(prompt=spec.caption, generator=generator, output_type="np", **generation).frames[0]
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
    return TinyEvaluation(
        count=len(specs),
        color_accuracy=color_ok / len(specs),
        direction_accuracy=direction_ok / len(specs),
        same_frame_ratio={layer: float(np.mean(v)) for layer, v in sorted(same_frame.items())},
        confusion=confusion,
    )


def evaluate_directory(model_dir: Path, **kwargs: Any) -> TinyEvaluation:
    """Evaluate a pipeline directory that has a vditscope.json with generation settings."""
    pipe, _, directory = load_pipeline(model_dir)
    generation = json.loads((Path(directory) / "vditscope.json").read_text())["generation"]
    return evaluate(pipe, generation, **kwargs)
