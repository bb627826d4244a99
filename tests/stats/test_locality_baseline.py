"""The uniform-attention baseline of the locality profiles (what the report divides by)."""

import torch

from vditscope import TokenLayout, attention_stats
from vditscope.stats.streaming import uniform_locality


def test_uniform_attention_matches_the_baseline() -> None:
    layout = TokenLayout(frames=4, height=3, width=5, video_start=6, text=(0, 6))
    n = 6 + 4 * 3 * 5
    q = torch.zeros(1, 1, n, 8)  # all logits equal: uniform attention
    k, v = torch.randn(1, 1, n, 8), torch.randn(1, 1, n, 8)
    _, stats = attention_stats(q, k, v, layout=layout)
    time_base, space_base = uniform_locality(4, 3, 5, n)
    torch.testing.assert_close(stats.locality_time[0, 0], time_base, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(stats.locality_space[0, 0], space_base, atol=1e-6, rtol=1e-5)
