"""The extension point: a technique written as a few-line observer on HookSession, against real diffusers
model code (tiny random models) and a dense float64 reference."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F

from vditscope.capture import HookSession, ObservedCall, Selection, capture, observing
from vditscope.errors import VditscopeError
from vditscope.stats.reference import dense_attention_stats

from ..families import BATCH_SIZE, FamilyCase, make_hunyuan_video, make_wan


@dataclass
class DenseAttention:
    """A custom technique in a few lines: compute each selected call densely in float64 and note where it ran."""

    session: HookSession
    seen: list[tuple[int, str, int, list[tuple[str, int]]]] = field(default_factory=list)

    def observe(self, call: ObservedCall) -> torch.Tensor:
        self.seen.append((call.site.layer, call.site.kind, call.state.step, call.labels))
        sdpa = call.sdpa
        out, _ = dense_attention_stats(sdpa.q, sdpa.k, sdpa.v, scale=sdpa.scale, attn_mask=sdpa.attn_mask)
        return out.to(sdpa.q.dtype)


class Boom:
    def __init__(self, session: HookSession) -> None:
        self.session = session

    def observe(self, call: ObservedCall) -> torch.Tensor:
        raise RuntimeError("observer failed")


def forward(case: FamilyCase) -> torch.Tensor:
    with torch.no_grad():
        return case.model(**case.inputs, return_dict=False)[0]


def traces(model: torch.nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if "_diffusers_hook" in m.__dict__ or "forward" in m.__dict__]


@pytest.mark.parametrize("make", [make_wan, make_hunyuan_video], ids=["wan", "hunyuan_video"])
def test_a_custom_observer_sees_the_selected_calls_and_sets_the_output(make) -> None:
    case = make()
    reference = forward(case)
    where = Selection(layers={1}, kinds={"self"})
    with observing(case.model, where, DenseAttention, name="dense") as dense:
        observed = forward(case)
    # only layer 1's self-attention, one forward (step 0), the batch as the cond branch
    assert {(layer, kind, step) for layer, kind, step, _ in dense.seen} == {(1, "self", 0)}
    assert [label for *_, labels in dense.seen for label in labels] == [("cond", i) for i in range(BATCH_SIZE)]
    assert dense.session.sites and all(s.layer == 1 and s.kind == "self" for s in dense.session.sites)
    # the float64 attention replaced the model's own: the same output to float rounding, not bit-identical
    torch.testing.assert_close(observed, reference, atol=1e-5, rtol=1e-5)
    assert traces(case.model) == []


def test_steps_select_forwards_of_a_bare_model() -> None:
    case = make_wan()
    with observing(case.model, Selection(steps=range(1, 2), kinds={"self"}), DenseAttention, name="dense") as dense:
        for _ in range(3):
            forward(case)
    assert {step for _, _, step, _ in dense.seen} == {1}
    assert len(dense.seen) == case.num_self_attn_layers


def test_an_observer_that_raises_leaves_no_trace() -> None:
    case = make_wan()
    reference = forward(case)
    with pytest.raises(RuntimeError, match="observer failed"), observing(case.model, Selection(), Boom, name="boom"):
        forward(case)
    assert traces(case.model) == []
    assert F.scaled_dot_product_attention is torch._C._nn.scaled_dot_product_attention
    assert torch.equal(forward(case), reference)


def test_a_second_session_of_one_name_is_refused_and_other_names_compose() -> None:
    case = make_wan()
    with capture(case.model) as cap, observing(case.model, Selection(), DenseAttention, name="dense") as dense:
        with pytest.raises(VditscopeError, match="dense is already open on this model; close it first"):  # noqa: SIM117
            with observing(case.model, Selection(layers={0}), DenseAttention, name="dense"):
                pass
        forward(case)
    # capture, opened first, runs the call through the later session (which computes it densely)
    assert len(dense.seen) == len(cap.records) // BATCH_SIZE > 0
    assert traces(case.model) == []


def test_bad_layers_raise_before_anything_is_attached() -> None:
    case = make_wan()
    with pytest.raises(ValueError, match="layer 5 is out of range: the model has 2 layers"):  # noqa: SIM117
        with observing(case.model, Selection(layers={5}), DenseAttention, name="dense"):
            pass
    assert traces(case.model) == []
