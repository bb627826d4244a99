"""`ablate_sinks`: remove the attention sinks of chosen layers during a generation, or as many
random keys as a control, to measure what the sinks carry.

Two paths: "mask" hides the chosen keys from every query (their scores get -inf, the rest of the
attention renormalizes; the score path) and "zero-values" keeps the attention weights but zeroes
the chosen keys' value vectors (the value path: the mass the sinks received now adds nothing).
Sinks are keys whose received attention (per query that can see them) is at least ``threshold`` times
the median key's (floored at the uniform share). Given the dense run's sink sets (``sink_sets``, from
``record_sink_sets``) the ablation hides exactly those keys at every call and head, and the random
control exactly as many visible non-sink keys of the same call and head: both variants remove the same
number of keys, and the sinks are the unchanged model's. Without them, sinks are found per call on the
ablated run's own trajectory (the control then matches each call's count, not the dense run's).
Random draws are seeded by (seed, generation, step, layer).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..stats.key_stats import KeyStats
from ..thresholds import SINK_RATIO
from .calls import ObservedCall, SdpaCall
from .selection import SELF_ONLY, Selection
from .session import HookSession, SessionObserver, Technique
from .sink_capture import call_key_stats
from .sink_sets import SinkSets

PATHS = ("mask", "zero-values")
SELECTIONS = ("sinks", "random")
DEFAULT_THRESHOLD = SINK_RATIO


def check_ablation(path: str, selection: str, threshold: float) -> None:
    if path not in PATHS:
        raise ValueError(f"unknown ablation path {path!r}; choose {' or '.join(PATHS)}")
    if selection not in SELECTIONS:
        raise ValueError(f"unknown key selection {selection!r}; choose {' or '.join(SELECTIONS)}")
    if not threshold > 1:
        raise ValueError(f"the sink threshold is a ratio to the median key and must be > 1, got {threshold}")


def choose_keys(
    stats: KeyStats,
    threshold: float,
    selection: str,
    generator: torch.Generator,
    fixed: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, H, Nk) bool: the sink keys, or as many random visible non-sink keys. The sinks are ``fixed``
    (B, H, Nk), the dense run's, when given, else the keys of this call with ratio >= threshold.

    One visible key per head is always kept so that no query loses every key."""
    sinks = stats.sinks(threshold) if fixed is None else fixed.to(device=stats.received.device, dtype=torch.bool)
    seen = stats.received > 0
    chosen = torch.zeros_like(sinks)
    batch, heads, _ = sinks.shape
    for b in range(batch):
        for h in range(heads):
            visible = int(seen[b, h].sum())
            count = min(int(sinks[b, h].sum()), max(visible - 1, 0))
            if count == 0:
                continue
            if selection == "sinks":  # the sinks, the most attended first where one must stay visible
                ranked = torch.where(sinks[b, h], stats.received[b, h], torch.full_like(stats.received[b, h], -1.0))
                order = ranked.argsort(descending=True)[:count]
            else:
                pool = torch.nonzero(seen[b, h] & ~sinks[b, h]).flatten()
                order = pool[torch.randperm(len(pool), generator=generator)[:count]]
            chosen[b, h, order] = True
    return chosen


def ablated_attention(call: SdpaCall, chosen: torch.Tensor, path: str) -> torch.Tensor:
    """The call's attention with the chosen keys (B, H, Nk) hidden ("mask") or their values zeroed."""
    q, k, v = call.q, call.k, call.v
    heads = q.shape[1]
    group = heads // k.shape[1]
    chosen = chosen.to(q.device)
    if path == "zero-values":
        k = k.repeat_interleave(group, dim=1) if group > 1 else k
        v = v.repeat_interleave(group, dim=1) if group > 1 else v
        v = v * (~chosen).unsqueeze(-1).to(v.dtype)
        return call.original(q, k, v, attn_mask=call.attn_mask, is_causal=call.is_causal, scale=call.scale)
    hide = chosen[:, :, None, :]  # (B, H, 1, Nk): broadcast over queries
    mask = call.attn_mask
    if call.is_causal:
        causal = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril()
        mask = causal if mask is None else _as_bool(mask) & causal
    if mask is None:
        combined: torch.Tensor = ~hide
    elif mask.dtype == torch.bool:
        combined = mask & ~hide
        # a query that could see only hidden keys (e.g. the first one of a causal model) keeps its row
        combined = torch.where(combined.any(-1, keepdim=True), combined, mask)
    else:
        mask = mask.to(q.dtype)
        combined = mask.masked_fill(hide, float("-inf"))
        combined = torch.where(torch.isinf(combined).all(-1, keepdim=True), mask, combined)
    kwargs: dict[str, Any] = {"attn_mask": combined, "scale": call.scale}
    if call.enable_gqa:
        kwargs["enable_gqa"] = True
    return call.original(q, k, v, **kwargs)


def _as_bool(mask: torch.Tensor) -> torch.Tensor:
    return mask if mask.dtype == torch.bool else mask > float("-inf")


@dataclass
class AblationRecord:
    """What one ablated call removed, per batch element (means over heads)."""

    generation: int
    step: int
    branch: str
    layer: int
    keys: float  # keys hidden or zeroed per head
    mass: float  # attention mass those keys received per query (before the ablation)


def ablate_call(
    call: SdpaCall,
    *,
    path: str,
    selection: str,
    threshold: float,
    generator: torch.Generator,
    chunk_size: int | None = None,
    fixed: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, KeyStats]:
    """(ablated output, chosen keys (B, H, Nk), the call's key statistics) of one SDPA call; ``fixed``: the
    dense run's sinks (B, H, Nk) of this call (see ``choose_keys``)."""
    stats = call_key_stats(call, chunk_size)
    with torch.no_grad():
        chosen = choose_keys(stats, threshold, selection, generator, fixed)
    return ablated_attention(call, chosen, path), chosen, stats


@dataclass(frozen=True)
class SinkAblationConfig:
    """Where to ablate (self-attention layers), which path, which keys ("sinks" or "random"), the sink
    threshold (ratio to the median key), the seed of the random control, the chunk size, and the dense
    run's sink sets (``record_sink_sets``; None: sinks found per call on the ablated trajectory)."""

    where: Selection = field(default_factory=lambda: Selection(kinds=SELF_ONLY))
    path: str = "mask"
    keys: str = "sinks"
    threshold: float = DEFAULT_THRESHOLD
    seed: int = 0
    chunk_size: int | None = None
    sink_sets: SinkSets | None = None

    def __post_init__(self) -> None:
        check_ablation(self.path, self.keys, self.threshold)


class SinkAblation(SessionObserver):
    """Computes the observed self-attention calls with sinks (or random keys) removed."""

    def __init__(self, session: HookSession, config: SinkAblationConfig) -> None:
        super().__init__(session)
        self.config = config
        self.path, self.selection, self.threshold, self.seed = config.path, config.keys, config.threshold, config.seed
        self.records: list[AblationRecord] = []

    def observe(self, call: ObservedCall) -> torch.Tensor:
        sdpa, state, layer = call.sdpa, call.state, call.site.layer
        if sdpa.q.ndim != 4 or sdpa.dropout_p > 0:
            return sdpa.run()
        generator = torch.Generator().manual_seed(
            (self.seed * 1_000_003 + state.generation * 10_007 + state.step * 101 + layer) % 2**63
        )
        out, chosen, stats = ablate_call(
            sdpa,
            path=self.path,
            selection=self.selection,
            threshold=self.threshold,
            generator=generator,
            chunk_size=self.config.chunk_size,
            fixed=self._recorded(call),
        )
        mass = (stats.received * chosen).sum(-1).mean(-1)
        keys = chosen.float().sum(-1).mean(-1)
        for b, (branch, _) in enumerate(call.labels):
            self.records.append(
                AblationRecord(state.generation, state.step, branch, layer, float(keys[b]), float(mass[b]))
            )
        return out

    def _recorded(self, call: ObservedCall) -> torch.Tensor | None:
        """(B, H, Nk) the dense run's sinks of this call, or None without recorded sets."""
        sets = self.config.sink_sets
        if sets is None:
            return None
        _, heads, _, _ = call.sdpa.q.shape
        num_keys = call.sdpa.k.shape[2]
        keys = [(call.state.step, branch, sample, call.site.layer) for branch, sample in call.labels]
        return torch.stack([sets.mask(key, heads, num_keys) for key in keys])

    def ablation_table(self) -> Any:
        """pandas DataFrame: one row per ablated call and batch element."""
        import pandas as pd

        return pd.DataFrame([asdict(r) for r in self.records], columns=list(AblationRecord.__dataclass_fields__))


SINK_ABLATION = Technique("ablate_sinks", SinkAblation, hook="vditscope_sink_ablation")


@contextmanager
def ablate_sinks(
    model_or_pipeline: Any,
    layers: Iterable[int] | None = None,
    *,
    path: str = "mask",
    selection: str = "sinks",
    threshold: float = DEFAULT_THRESHOLD,
    seed: int = 0,
    chunk_size: int | None = None,
    sink_sets: SinkSets | None = None,
) -> Iterator[SinkAblation]:
    """Remove the sinks (or as many random keys) of every self-attention call of the chosen layers
    (None = all) made inside the block; ``sink_sets``: the dense run's (``record_sink_sets``), which fixes
    the keys and matches the control's count. Hooks are removed on exit, also on errors."""
    where = Selection(layers=None if layers is None else frozenset(int(layer) for layer in layers), kinds=SELF_ONLY)
    config = SinkAblationConfig(where, path, selection, threshold, seed, chunk_size, sink_sets)
    with apply_sink_ablation(model_or_pipeline, config) as session:
        yield session


def apply_sink_ablation(model_or_pipeline: Any, config: SinkAblationConfig) -> AbstractContextManager[SinkAblation]:
    """Ablate the sinks of the self-attention calls ``config.where`` selects; yields the ``SinkAblation``."""
    return SINK_ABLATION.apply(model_or_pipeline, config)
