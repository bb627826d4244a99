"""Structured windows (spatial, temporal, 3D tiles, Sparse VideoGen's per-head choice) against a
float64 reference written with loops over every (query, key) pair."""

from __future__ import annotations

import math

import pytest
import torch

from vditscope.layout import TokenLayout
from vditscope.stats.structured import structured_attention, svg_choice

LAYOUT = TokenLayout(3, 4, 5, video_start=6, text=(0, 6))  # 6 text, 60 video, 2 trailing tokens
N = 6 + 60 + 2


def keep_row(i: int, window: tuple[int, int, int]) -> torch.Tensor:
    """The keys query i keeps, by the definition: non-video tokens always, video keys in the window."""
    keep = torch.ones(N, dtype=torch.bool)
    if not 6 <= i < 66:
        return keep
    fi, rest = divmod(i - 6, 20)
    yi, xi = divmod(rest, 5)
    for j in range(6, 66):
        fj, rest = divmod(j - 6, 20)
        yj, xj = divmod(rest, 5)
        keep[j] = abs(fi - fj) <= window[0] and abs(yi - yj) <= window[1] and abs(xi - xj) <= window[2]
    return keep


@pytest.mark.parametrize("chunk_size", [7, None])
@pytest.mark.parametrize(
    ("kind", "window", "expected_window"),
    [("spatial", None, (0, 99, 99)), ("temporal", None, (99, 0, 0)), ("tiles", (1, 1, 2), (1, 1, 2)),
     ("tiles", None, (1, 2, 2)), ("spatial", (0, 1, 1), (0, 1, 1))],
)  # fmt: skip
def test_windows_match_the_loop_reference(kind, window, expected_window, chunk_size) -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 3, N, 8, dtype=torch.float64) for _ in range(3))
    out, stats, kinds = structured_attention(
        q, k, v, layout=LAYOUT, kind=kind, window=window, temperature=0.7, chunk_size=chunk_size
    )
    assert kinds == [kind] * 3
    for h in range(3):
        logits = q[0, h] @ k[0, h].T / math.sqrt(8) / 0.7
        mass = dropped = 0.0
        for i in range(N):
            keep = keep_row(i, expected_window)
            p = torch.softmax(logits[i], -1)
            mass += float(p[~keep].sum())
            dropped += float((~keep).sum())
            expected = torch.softmax(logits[i].masked_fill(~keep, -math.inf), -1) @ v[0, h]
            torch.testing.assert_close(out[0, h, i], expected, atol=2e-6, rtol=1e-5)
        assert float(stats.mass_dropped[0, h]) == pytest.approx(mass / N, abs=1e-6)
        assert float(stats.entries_dropped[0, h]) == pytest.approx(dropped / N / N, abs=1e-7)


def test_svg_chooses_spatial_and_temporal_heads() -> None:
    """Head 0 scores same-frame keys high, head 1 same-position keys: svg must tell them apart."""
    frame = torch.zeros(N, 3)
    place = torch.zeros(N, 20)
    for j in range(6, 66):
        frame[j, (j - 6) // 20] = 1
        place[j, (j - 6) % 20] = 1
    features = torch.cat([frame, place], dim=1)  # (N, 23)
    q = torch.stack([torch.cat([frame * 8, place * 0], 1), torch.cat([frame * 0, place * 8], 1)])[None]
    k = torch.stack([features, features])[None]
    v = torch.randn(1, 2, N, 4)
    assert svg_choice(q, k, v, LAYOUT, scale=1.0) == ["spatial", "temporal"]
    _, _, kinds = structured_attention(q, k, v, layout=LAYOUT, kind="svg", scale=1.0)
    assert kinds == ["spatial", "temporal"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"kind": "diagonal"}, "unknown mask"), ({"kind": "tiles", "window": (1, -1, 2)}, "non-negative"),
     ({"kind": "spatial", "temperature": 0.0}, "temperature")],
)  # fmt: skip
def test_bad_windows_raise(kwargs, message) -> None:
    q = torch.randn(1, 2, N, 8)
    with pytest.raises(ValueError, match=message):
        structured_attention(q, q, q, layout=LAYOUT, **kwargs)
