"""The structure analysis on synthetic maps: correlations, similarity along each axis, the head
rule, text-token shares, sink placement, and map names."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from vditscope.analyses.structure import (
    SINK_RATIO,
    classify_heads,
    first_token_share,
    head_class,
    mean_off_diagonal,
    pearson_matrix,
    similarity_along,
    sink_table,
    text_attention,
    token_place,
)
from vditscope.store.map_names import MapName, parse_map_name


def test_pearson_matrix_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    vectors = [rng.random((3, 7, 7)) for _ in range(5)]
    expected = np.corrcoef(np.stack([v.ravel() for v in vectors]))
    np.testing.assert_allclose(pearson_matrix(vectors), expected, atol=1e-12)
    assert mean_off_diagonal(expected) == pytest.approx(expected[np.triu_indices(5, 1)].mean())
    assert np.isnan(mean_off_diagonal(np.ones((1, 1))))


def test_similarity_along_each_axis_groups_the_other_attributes() -> None:
    """Maps equal across prompts, independent across seeds: r = 1 across prompts, ~0 across seeds."""
    gen = torch.Generator().manual_seed(0)
    base = {(seed, step): torch.rand(2, 11, 11, generator=gen) for seed in range(3) for step in (0, 5)}
    maps = {
        MapName("token_map", prompt, seed, "self", layer, step): base[(seed, step)] * (1 + layer)
        for prompt in range(2)
        for seed in range(3)
        for step in (0, 5)
        for layer in range(2)
    }
    prompts = similarity_along(maps, "prompts", "token_map")
    assert prompts.labels == [0, 1] and set(prompts.matrices) == {0, 1}
    np.testing.assert_allclose(prompts.table["mean_similarity"], 1.0, atol=1e-12)
    assert list(prompts.table["groups"]) == [6, 6]  # 3 seeds x 2 steps per layer
    seeds = similarity_along(maps, "seeds", "token_map")
    assert seeds.matrices[0].shape == (3, 3)
    assert abs(float(seeds.table["mean_similarity"].iloc[0])) < 0.3
    steps = similarity_along(maps, "steps", "token_map")
    assert steps.labels == [0, 5] and list(steps.table["groups"]) == [6, 6]


@pytest.mark.parametrize(
    ("same_frame", "same_position", "sink_mass", "expected"),
    [
        (0.9, 0.05, 0.01, "spatial"),
        (0.5, 0.3, 0.01, "temporal"),  # half in its own frame, but not 2x its position elsewhere
        (0.2, 0.6, 0.01, "temporal"),
        (0.3, 0.1, 0.01, "mixed"),
        (0.9, 0.05, 0.5, "sink"),
        (float("nan"), float("nan"), 0.01, "unknown"),
    ],
)
def test_head_rule(same_frame: float, same_position: float, sink_mass: float, expected: str) -> None:
    assert head_class(same_frame, same_position, sink_mass) == expected


def test_classify_heads_uses_the_cond_self_rows_only() -> None:
    rows = [
        {"kind": k, "branch": b, "layer": 0, "head": 0, "same_frame_mass": sf, "same_position_mass": 0.0,
         "sink_mass": 0.01, "sink_ratio": 2.0, "entropy": 1.0}
        for k, b, sf in [("self", "cond", 0.8), ("self", "cond", 0.6), ("self", "uncond", 0.0), ("cross", "cond", 0.0)]
    ]  # fmt: skip
    heads = classify_heads(pd.DataFrame(rows))
    assert len(heads) == 1 and heads["same_frame_mass"].iloc[0] == pytest.approx(0.7)
    assert heads["class"].iloc[0] == "spatial"


def test_text_attention_shares_and_first_token() -> None:
    maps = {
        "text_received.p0.s0.cross.layer2": torch.tensor([[0.4, 0.1, 0.1], [0.2, 0.1, 0.1]]),
        "text_received.p1.s0.cross.layer2": torch.tensor([[0.2, 0.2, 0.2], [0.2, 0.2, 0.2]]),
        "frame_map.p0.s0.self.layer2": torch.ones(2, 3, 3),
    }
    text = text_attention(maps, {0: ["a", "red", "</s>"]})
    assert list(text["token"]) == ["a", "red", "</s>"]
    np.testing.assert_allclose(text["mass"], [0.25, 0.15, 0.15])
    first = first_token_share(text)
    assert first["first_token_share"].iloc[0] == pytest.approx(0.25 / 0.55)
    assert first["text_tokens"].iloc[0] == 3


def test_sink_table_places_keys_and_measures_consistency() -> None:
    layout = {"grid": [2, 3, 4], "text_tokens": 5, "text_position": "before"}
    assert token_place(3, layout) == "text 3"
    assert token_place(5 + 12 + 4 + 3, layout) == "video f1 y1 x3"
    assert token_place(2, {"grid": [2, 3, 4], "text_tokens": 5, "text_position": "after"}) == "video f0 y0 x2"
    assert token_place(24 + 1, {"grid": [2, 3, 4], "text_tokens": 5, "text_position": "after"}) == "text 1"
    rows = [
        {"kind": "self", "branch": "cond", "layer": 1, "head": 0, "sink_index": i, "sink_ratio": r, "sink_mass": 0.2}
        for i, r in [(0, 30.0), (0, 20.0), (7, 10.0), (0, 30.0)]
    ]
    sinks = sink_table(pd.DataFrame(rows), layout)
    row = sinks.iloc[0]
    assert row["key"] == 0 and row["where"] == "text 0" and row["consistency"] == 0.75
    assert row["sink_ratio"] == pytest.approx(22.5) and bool(row["sink"]) == (SINK_RATIO <= 22.5)


def test_map_names_round_trip() -> None:
    for name in (MapName("token_map", 3, 12, "self", 7, 19), MapName("frame_map", 0, -1, "cross", 0)):
        assert parse_map_name(str(name)) == name
    assert parse_map_name("frame_map.p0.s0.self.layer2").step is None
    assert parse_map_name("something else") is None
