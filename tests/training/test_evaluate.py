"""eval-tiny's scoring: every clip lands in the direction confusion matrix, a clip without a shape too."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from vditscope.data import shapes
from vditscope.training.evaluate import confusion_table, evaluate


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
    assert result.head_classes == {} and result.color_accuracy < 1
