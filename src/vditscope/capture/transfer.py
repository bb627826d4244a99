"""`transfer`: self-attention map transfer between two generations run in lockstep as one batch.

Element 0 of each CFG branch is the source, element 1 the target. In the chosen self-attention
layers and steps the target's video queries attend as the source's do:

- ``mode="attention"``: softmax(Q_src K_src^T) V_tgt, i.e. the source's queries and keys (its
  attention probabilities) with the target's values;
- ``mode="kv"``: softmax(Q_tgt K_src^T) V_src, the target's queries on the source's keys and values.

For joint text-video attention only the video-video block is transferred: text keys (and text
query rows) stay the target's. Everything is computed by the model's own SDPA on rearranged
q, k, v (never an N x N map): in attention mode the video rows use q' = [q_tgt, q_src] against
k' = [k_tgt, 0] on text keys and [0, k_src] on video keys, so q'.k' is the target's logit on text
keys and the source's on video keys.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from ..layout import TokenLayout
from .calls import ObservedCall
from .selection import SELF_ONLY, Selection, step_range
from .session import HookSession, SessionObserver, Technique

TRANSFER_MODES = ("attention", "kv")


@dataclass(frozen=True)
class TransferConfig:
    """Where to transfer (None = every self-attention layer / every step) and how; ``where`` is the
    same place as a ``Selection`` of self-attention calls."""

    layers: frozenset[int] | None = None
    steps: tuple[int, int] | None = None
    mode: str = "attention"

    def __post_init__(self) -> None:
        if self.mode not in TRANSFER_MODES:
            raise ValueError(f"unknown transfer mode {self.mode!r}; choose {' or '.join(TRANSFER_MODES)}")
        if self.steps is not None:
            steps = step_range(self.steps)
            object.__setattr__(self, "steps", (steps.start, steps.stop))
        object.__setattr__(self, "layers", self.where.layers)

    @cached_property
    def where(self) -> Selection:
        """The transfer's place as a Selection of self-attention calls."""
        steps = None if self.steps is None else range(*self.steps)
        return Selection(layers=self.layers, steps=steps, kinds=SELF_ONLY, owner="a transfer")

    def matches(self, layer: int, step: int) -> bool:
        return self.where.matches(layer, step)


class Transfer(SessionObserver):
    """Replaces the target element's self-attention output by the transferred one."""

    def __init__(self, session: HookSession, config: TransferConfig) -> None:
        super().__init__(session)
        self.config = config
        self.transferred_calls = 0

    def observe(self, call: ObservedCall) -> torch.Tensor:
        sdpa, site = call.sdpa, call.site
        q, k, v = sdpa.q, sdpa.k, sdpa.v
        out = sdpa.run()
        if q.ndim != 4:
            return out
        if sdpa.attn_mask is not None or sdpa.is_causal or sdpa.dropout_p > 0 or k.shape[1] != q.shape[1]:
            self.session.note(f"{site.name}: transfer needs unmasked, non-grouped self-attention; call left as is")
            return out
        where = {label: i for i, label in enumerate(call.labels)}
        layout = self.adapter.layout(call.state.grid, k.shape[2])
        scale = 1.0 / math.sqrt(q.shape[-1]) if sdpa.scale is None else sdpa.scale
        out = out.clone()
        for (branch, sample), target in where.items():
            source = where.get((branch, 0))
            if sample != 1 or source is None:
                continue
            src = (q[source : source + 1], k[source : source + 1], v[source : source + 1])
            tgt = (q[target : target + 1], k[target : target + 1], v[target : target + 1])
            out[target : target + 1] = transferred(
                sdpa.original, src, tgt, layout, scale, self.config.mode, out[target : target + 1]
            )
            self.transferred_calls += 1
        return out


def transferred(
    sdpa: Any,
    source: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    target: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    layout: TokenLayout,
    scale: float,
    mode: str,
    target_out: torch.Tensor,
) -> torch.Tensor:
    """The target's self-attention output (1, H, N, Dv) with the source's video-video attention."""
    q_s, k_s, v_s = source
    q_t, k_t, v_t = target
    video = slice(layout.video_start, layout.video_stop)
    num = k_t.shape[2]
    if layout.video_start == 0 and layout.video_stop == num:  # video-only self-attention
        if mode == "attention":
            return sdpa(q_s, k_s, v_t, scale=scale)
        return sdpa(q_t, k_s, v_s, scale=scale)
    out = target_out.clone()
    if mode == "attention":
        zeros = torch.zeros_like(k_t)
        keys = torch.cat([k_t, zeros], dim=-1)
        keys[:, :, video] = torch.cat([zeros[:, :, video], k_s[:, :, video]], dim=-1)
        queries = torch.cat([q_t[:, :, video], q_s[:, :, video]], dim=-1)
        out[:, :, video] = sdpa(queries, keys, v_t, scale=scale)
    else:
        keys, values = k_t.clone(), v_t.clone()
        keys[:, :, video] = k_s[:, :, video]
        values[:, :, video] = v_s[:, :, video]
        out[:, :, video] = sdpa(q_t[:, :, video], keys, values, scale=scale)
    return out


TRANSFER = Technique("transfer", Transfer)


@contextmanager
def transfer(model_or_pipeline: Any, config: TransferConfig) -> Iterator[Transfer]:
    """Transfer self-attention from batch element 0 (source) to element 1 (target) of every CFG branch
    in the generations run inside the block; hooks are removed on exit, also on errors."""
    with apply_transfer(model_or_pipeline, config) as session:
        yield session


def apply_transfer(model_or_pipeline: Any, config: TransferConfig) -> AbstractContextManager[Transfer]:
    """Transfer attention in the self-attention calls ``config.where`` selects; yields the ``Transfer``."""
    return TRANSFER.apply(model_or_pipeline, config)
