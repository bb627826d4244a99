"""The SDPA interception: the global rebinding (the default) or a TorchFunctionMode scoped to observed modules;
both route to the same chained handlers, so sessions compose and outputs and records agree."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F

import vditscope
from vditscope.capture import HookSession, ObservedCall, Selection, capture, observing, sdpa_patch
from vditscope.stats.reference import dense_attention_stats

from ..families import ALL_FAMILIES, make_wan

REAL_SDPA = torch._C._nn.scaled_dot_product_attention


def qkv(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(1, 2, 6, 8, generator=generator) for _ in range(3))  # type: ignore[return-value]


def dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return dense_attention_stats(q, k, v)[0]


@dataclass
class Scale:
    """Multiplies what it gets from the SDPA it was handed, and keeps that input."""

    factor: float
    session: HookSession | None = None
    received: list[torch.Tensor] = field(default_factory=list)

    def observe(self, call: ObservedCall) -> torch.Tensor:
        out = call.run()
        self.received.append(out.clone())
        return out * self.factor


def forward(case) -> torch.Tensor:
    with torch.no_grad():
        return case.model(**case.inputs, return_dict=False)[0]


@pytest.mark.parametrize("kind", sdpa_patch.INTERCEPTIONS)
def test_handlers_chain_against_a_dense_reference(kind: str) -> None:
    """Inside an outer handler's block the inner handler's ``original`` runs the outer handler."""
    q, k, v = qkv()
    with sdpa_patch.interception(kind), sdpa_patch.routed_sdpa():
        with sdpa_patch.sdpa_handler(lambda original, *call: original(*call[:3]) + 1.0):
            with sdpa_patch.sdpa_handler(lambda original, *call: 2.0 * original(*call[:3])):
                out = F.scaled_dot_product_attention(q, k, v)
            outer_only = F.scaled_dot_product_attention(q, k, v)
        plain = F.scaled_dot_product_attention(q, k, v)
    reference = dense(q, k, v)
    torch.testing.assert_close(out.double(), 2.0 * (reference + 1.0), atol=1e-5, rtol=0)
    torch.testing.assert_close(outer_only.double(), reference + 1.0, atol=1e-5, rtol=0)
    torch.testing.assert_close(plain.double(), reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", sdpa_patch.INTERCEPTIONS)
def test_calls_outside_observed_modules_are_left_alone(kind: str) -> None:
    """An SDPA call made in the block but outside the selected modules reaches torch untouched (no observer
    sees it); under the mode F.scaled_dot_product_attention itself is never rebound."""
    case = make_wan()
    q, k, v = qkv()
    where = Selection(layers={0}, kinds={"self"})
    with (
        sdpa_patch.interception(kind),
        observing(case.model, where, lambda s: Scale(0.0, s), name="zero") as zero,
    ):
        assert (F.scaled_dot_product_attention is REAL_SDPA) == (kind == "mode")
        direct = F.scaled_dot_product_attention(q, k, v)
        forward(case)
    assert len(zero.received) == 1  # layer 0's self-attention only, not the direct call
    torch.testing.assert_close(direct.double(), dense(q, k, v), atol=1e-5, rtol=0)


def test_the_rebinding_is_the_default_and_is_undone() -> None:
    with capture(make_wan().model):
        assert F.scaled_dot_product_attention is not REAL_SDPA
    assert F.scaled_dot_product_attention is REAL_SDPA


def test_the_interception_cannot_change_while_a_session_is_open() -> None:
    with capture(make_wan().model), pytest.raises(RuntimeError, match="while a session is open"):  # noqa: SIM117
        with sdpa_patch.interception("mode"):
            pass
    with pytest.raises(ValueError, match="unknown SDPA interception"):  # noqa: SIM117
        with sdpa_patch.interception("global"):
            pass


@pytest.mark.parametrize("kind", sdpa_patch.INTERCEPTIONS)
def test_two_sessions_on_one_module_compose(kind: str) -> None:
    """A session opened earlier runs its calls through the later one's handler: it receives that output."""
    case = make_wan()
    reference = forward(case)
    where = Selection(layers={1}, kinds={"self"})
    with sdpa_patch.interception(kind), observing(case.model, where, lambda s: Scale(2.0, s), name="first") as first:
        with observing(case.model, where, lambda s: Scale(3.0, s), name="second") as second:
            both = forward(case)
        first_only = forward(case)
    assert len(first.received) == 2 and len(second.received) == 1
    torch.testing.assert_close(first.received[0], 3.0 * second.received[0], atol=0, rtol=0)
    torch.testing.assert_close(first.received[1], second.received[0], atol=0, rtol=0)  # same call, second closed
    assert not torch.equal(both, first_only) and not torch.equal(first_only, reference)


@pytest.mark.parametrize("make", ALL_FAMILIES, ids=[f.__name__.removeprefix("make_") for f in ALL_FAMILIES])
def test_both_interceptions_give_the_same_outputs_and_records(make) -> None:
    case = make()
    reference = forward(case)
    tables = {}
    for kind in sdpa_patch.INTERCEPTIONS:
        with sdpa_patch.interception(kind), capture(case.model) as cap:
            assert torch.equal(forward(case), reference)
        tables[kind] = cap.table()
    assert len(tables["mode"]) > 0 and tables["mode"].equals(tables["rebind"])


@pytest.mark.parametrize("kind", sdpa_patch.INTERCEPTIONS)
def test_capture_inside_intervene(kind: str) -> None:
    """An intervention on layer 0 changes what capture sees in layer 1 (q, k come from edited activations)."""
    case = make_wan()
    with capture(case.model, layers=[1]) as alone:
        forward(case)
    edit = vditscope.AttentionEdit(temperature=0.25, layers={0})
    with (
        sdpa_patch.interception(kind),
        vditscope.intervene(case.model, [edit]) as session,
        capture(case.model, layers=[1]) as inside,
    ):
        forward(case)
    assert session.totals.entries > 0 and inside.table().layer.unique().tolist() == [1]
    assert not inside.table().entropy.equals(alone.table().entropy)
