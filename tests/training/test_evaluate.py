"""eval-tiny's scoring: every clip lands in the direction confusion matrix, a clip without a shape too."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd

from vditscope.data import shapes
from vditscope.training.evaluate import captured_heads, confusion_table, evaluate, largest_same_position_mass


class BlankPipeline:
    """A pipeline whose every clip shows only a black background (no shape to read)."""

    def __call__(self, **_kwargs: object) -> SimpleNamespace:
        return SimpleNamespace(frames=[np.full((5, 16, 16, 3), shapes.BACKGROUNDS["black"][0], dtype=np.float32)])


def test_clips_without_a_shape_are_counted_as_none() -> None:
    result = evaluate(BlankPipeline(), {}, count=6, captured=0)
    table = confusion_table(result)
    assert list(table.columns) == ["prompted", *shapes.DIRECTIONS, shapes.NO_SHAPE, "accuracy"]
    blank = [spec for spec in shapes.split_specs(0, 40)[1][:6] if spec.background == "black"]
    assert int(table[shapes.NO_SHAPE].sum()) == len(blank) > 0
    assert int(table[list(shapes.DIRECTIONS)].to_numpy().sum()) + len(blank) == 6
    assert result.head_classes == {} and result.same_position_max == {} and result.color_accuracy < 1


def test_the_largest_same_position_mass_is_taken_per_layer_over_heads_on_the_cond_branch() -> None:
    """eval-tiny's temporal figure: per layer, the head with the most mass on its own position in the other frames
    (its mean over the captured calls), the uncond branch and cross-attention left out, as the report's rule does."""
    rows = [
        {"kind": kind, "branch": branch, "layer": layer, "head": head, "same_position_mass": mass,
         "same_frame_mass": 0.2, "sink_mass": 0.01, "sink_ratio": 1.0, "entropy": 3.0}
        for kind, branch, layer, head, mass in [
            ("self", "cond", 0, 0, 0.1), ("self", "cond", 0, 0, 0.3), ("self", "cond", 0, 1, 0.15),
            ("self", "cond", 1, 0, 0.05), ("self", "uncond", 1, 0, 0.9), ("cross", "cond", 1, 1, 0.8),
        ]
    ]  # fmt: skip
    heads = captured_heads([pd.DataFrame(rows)])
    assert largest_same_position_mass(heads) == {0: 0.2, 1: 0.05}
    assert heads.set_index(["layer", "head"])["class"][(0, 0)] == "mixed"
