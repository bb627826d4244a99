"""TokenLayout's fit to a sequence: a video-only layout must cover the whole sequence."""

from __future__ import annotations

import pytest
import torch

from vditscope import TokenLayout, attention_stats


def qkv(tokens: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return tuple(torch.randn(1, 2, tokens, 8, generator=g, dtype=torch.float64) for _ in range(3))


def test_a_video_only_layout_of_part_of_the_sequence_is_refused() -> None:
    # 2 x 3 x 3 = 18 video tokens in a sequence of 25 with no text: the frame maps' rows would sum to the
    # part's mass (about 0.7 here), not 1
    with pytest.raises(ValueError, match="covers 18 of the sequence's 25 tokens"):
        attention_stats(*qkv(25), layout=TokenLayout(frames=2, height=3, width=3))


def test_frame_map_rows_of_a_covering_layout_sum_to_one() -> None:
    _, stats = attention_stats(*qkv(18), layout=TokenLayout(frames=2, height=3, width=3))
    sums = stats["frame_map"].sum(-1)
    assert torch.allclose(sums, torch.ones_like(sums), atol=1e-6)


def test_other_tokens_beside_text_stay_allowed() -> None:
    layout = TokenLayout(frames=2, height=3, width=3, video_start=0, text=(18, 22))  # 3 tokens of neither kind
    _, stats = attention_stats(*qkv(25), layout=layout)
    assert stats["frame_map"].shape == (1, 2, 2, 2)
