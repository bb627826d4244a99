"""Probes: a statistic of your own on every observed call, checked against the built-in ones."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import vditscope
from vditscope.adapters.loading import load_pipeline
from vditscope.capture.probes import ProbeCall

PROMPT = "a red square moving left on a black background"


@pytest.fixture(scope="module")
def tiny() -> tuple:
    pipe, _, directory = load_pipeline(vditscope.tiny_model_dir("tiny-wan"))  # self- and cross-attention calls
    generation = json.loads((directory / "vditscope.json").read_text())["generation"]
    return pipe, {**generation, "num_inference_steps": 2, "num_frames": 9}


def _run(pipe, generation, **kwargs):
    with vditscope.capture(pipe, **kwargs) as cap:
        frames = pipe(prompt=PROMPT, generator=torch.Generator().manual_seed(0), output_type="np", **generation)
    return cap, frames.frames[0]


def entropy(call: ProbeCall) -> torch.Tensor:
    """Mean entropy over queries per head, from the dense probabilities (small calls only)."""
    p = call.probabilities().double()
    return -(p * torch.log(p.clamp(min=1e-300))).sum(-1).mean(-1)  # (B, H)


def test_a_per_head_probe_becomes_a_column_equal_to_the_dense_reference(tiny) -> None:
    pipe, generation = tiny
    seen: list[tuple[str, int, int]] = []

    def where(call: ProbeCall) -> np.ndarray:
        seen.append((call.kind, call.layer, call.step))
        return np.zeros((call.q.shape[0], 2, 3))  # (B, 2, 3): kept on the records, not a column

    plain = pipe(prompt=PROMPT, generator=torch.Generator().manual_seed(0), output_type="np", **generation).frames[0]
    cap, frames = _run(pipe, generation, probes={"dense_entropy": entropy, "where": where})
    assert np.array_equal(frames, plain)  # probes never change the output
    table = cap.table()
    assert "dense_entropy" in table and "where" not in table
    np.testing.assert_allclose(table["dense_entropy"], table["entropy"], rtol=1e-5, atol=1e-5)
    assert len(seen) == len({(r.kind, r.layer, r.step, r.branch) for r in cap.records})
    assert {kind for kind, _, _ in seen} == {"self", "cross"}
    assert all(r.probes["where"].shape == (2, 3) for r in cap.records)
    cross = next(r for r in cap.records if r.kind == "cross")
    assert cross.probes["dense_entropy"].shape == (cross.heads,)


def test_bad_probes_are_refused_clearly(tiny) -> None:
    pipe, generation = tiny
    with pytest.raises(ValueError, match="built-in column"):
        _run(pipe, generation, probes={"entropy": entropy})
    with pytest.raises(ValueError, match="not callable"):
        _run(pipe, generation, probes={"x": 3})
    with pytest.raises(ValueError, match="first axis must be the call's batch"):
        _run(pipe, generation, probes={"scalar": lambda call: torch.tensor(1.0)})
    cap, _ = _run(pipe, generation)  # and the model is left as it was
    assert all(not r.probes for r in cap.records)


@pytest.mark.parametrize("case", ["causal", "bool", "additive"])
def test_probe_probabilities_of_a_query_slice_match_the_dense_reference(case: str) -> None:
    from vditscope.stats.reference import dense_probabilities

    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(2, 4, 13, 8, generator=g), torch.randn(2, 2, 13, 8, generator=g)
    mask = None
    if case == "bool":
        mask = torch.rand(2, 1, 13, 13, generator=g) > 0.3
    elif case == "additive":
        mask = torch.randn(1, 4, 13, 13, generator=g)
    call = ProbeCall(q, k, k, 0.35, mask, case == "causal", None, "self", 0, 0, "blocks.0.attn1")
    want = dense_probabilities(q, k, scale=0.35, attn_mask=mask, is_causal=case == "causal")[:, :, 5:11]
    torch.testing.assert_close(call.probabilities(slice(5, 11)).double(), want, atol=1e-5, rtol=1e-5)
