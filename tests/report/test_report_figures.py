"""Figure helpers whose numbers a reader relies on."""

from __future__ import annotations

import numpy as np

from vditscope.report.figures import pareto_front


def test_pareto_front_keeps_only_undominated_points() -> None:
    # equal sparsities listed worse-first: the old front drew a vertical segment through (0.5, 20)
    x = np.array([0.5, 0.5, 0.25, 0.25, 0.75, 0.0, 0.75])
    y = np.array([20.0, 30.0, 25.0, 35.0, 10.0, 60.0, 12.0])
    front_x, front_y = pareto_front(x, y)
    assert front_x == [0.75, 0.5, 0.25, 0.0] and front_y == [12.0, 30.0, 35.0, 60.0]
    for fx, fy in zip(front_x, front_y, strict=True):  # nothing at least as sparse is better
        assert not np.any((x >= fx) & (y > fy))
