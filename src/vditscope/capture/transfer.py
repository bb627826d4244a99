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
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..adapters import AttentionSite, FamilyAdapter, adapter_for
from ..layout import TokenLayout
from .session import Capture, ForwardState, SdpaCall, attached, checked_site_layers, transformers_of

TRANSFER_MODES = ("attention", "kv")


@dataclass(frozen=True)
class TransferConfig:
    """Where to transfer (None = every self-attention layer / every step) and how."""

    layers: frozenset[int] | None = None
    steps: tuple[int, int] | None = None
    mode: str = "attention"

    def __post_init__(self) -> None:
        if self.mode not in TRANSFER_MODES:
            raise ValueError(f"unknown transfer mode {self.mode!r}; choose {' or '.join(TRANSFER_MODES)}")
        if self.layers is not None:
            if not self.layers:
                raise ValueError("the layer set of a transfer is empty")
            object.__setattr__(self, "layers", frozenset(int(x) for x in self.layers))
        if self.steps is not None:
            start, stop = (int(s) for s in self.steps)
            if not 0 <= start < stop:
                raise ValueError(f"a step range must be start < stop with start >= 0, got {self.steps}")
            object.__setattr__(self, "steps", (start, stop))

    def matches(self, layer: int, step: int) -> bool:
        return (self.layers is None or layer in self.layers) and (
            self.steps is None or self.steps[0] <= step < self.steps[1]
        )


class Transfer(Capture):
    """Hooks that replace the target element's self-attention output by the transferred one."""

    hook_name = "vditscope_transfer"
    session_name = "transfer"

    def __init__(
        self, models: list[nn.Module], adapter: FamilyAdapter, sites: list[AttentionSite], config: TransferConfig
    ) -> None:
        super().__init__(
            models, adapter, sites, steps=None, top_mass="off", fused=False, chunk_size=None, keep_maps=False
        )
        self.config = config
        self.transferred_calls = 0

    def _observe(self, site: AttentionSite, state: ForwardState, start: int, call: SdpaCall) -> torch.Tensor:
        q, k, v = call.q, call.k, call.v
        out = call.run()
        if site.kind != "self" or q.ndim != 4 or not self.config.matches(site.layer, state.step):
            return out
        if call.attn_mask is not None or call.is_causal or call.dropout_p > 0 or k.shape[1] != q.shape[1]:
            self._note(f"{site.name}: transfer needs unmasked, non-grouped self-attention; call left as is")
            return out
        labels = call.labels(state, start)
        where = {label: i for i, label in enumerate(labels)}
        layout = self.adapter.layout(state.grid, k.shape[2])
        scale = 1.0 / math.sqrt(q.shape[-1]) if call.scale is None else call.scale
        out = out.clone()
        for (branch, sample), target in where.items():
            source = where.get((branch, 0))
            if sample != 1 or source is None:
                continue
            src = (q[source : source + 1], k[source : source + 1], v[source : source + 1])
            tgt = (q[target : target + 1], k[target : target + 1], v[target : target + 1])
            out[target : target + 1] = transferred(
                call.original, src, tgt, layout, scale, self.config.mode, out[target : target + 1]
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


@contextmanager
def transfer(model_or_pipeline: Any, config: TransferConfig) -> Iterator[Transfer]:
    """Transfer self-attention from batch element 0 (source) to element 1 (target) of every CFG branch
    in the generations run inside the block; hooks are removed on exit, also on errors."""
    models, scheduler = transformers_of(model_or_pipeline)
    adapter = adapter_for(models[0])
    sites = [site for model in models for site in adapter.sites(model) if site.kind == "self"]
    checked_site_layers(config.layers, sites)
    session = Transfer(models, adapter, sites, config)
    with attached(session, models, scheduler):
        yield session
