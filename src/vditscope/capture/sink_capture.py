"""`sink_capture`: per-key statistics of every observed self-attention call, for attention-sink studies.

Each call keeps its top keys per head by received attention (index, mass, ratio to the median
key, key and value norms) for per-step detection and consistency; the conditional branch's
calls are also summed per layer over all keys (float32 on the CPU, one (H, N) row set per layer),
so the run-level table covers every key exactly, not only the keys that topped single steps.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..stats.key_stats import KeyStats, key_stats, sink_baseline
from .calls import ObservedCall, SdpaCall
from .selection import SELF_ONLY, Selection
from .session import HookSession, SessionObserver, Technique

CALL_COLUMNS = [
    "generation",
    "step",
    "branch",
    "sample",
    "layer",
    "head",
    "rank",
    "token_index",
    "received",
    "ratio",
    "key_norm",
    "value_norm",
    "key_norm_median",
    "value_norm_median",
    "tokens",
]


@dataclass
class SinkCall:
    """The top keys of each head of one batch element of one observed call."""

    generation: int
    step: int
    branch: str
    sample: int
    layer: int
    tokens: int
    index: np.ndarray  # (H, K) key indices, by received mass descending
    received: np.ndarray  # (H, K) mean attention over queries
    ratio: np.ndarray  # (H, K) received / median received
    key_norm: np.ndarray  # (H, K)
    value_norm: np.ndarray  # (H, K)
    key_norm_median: np.ndarray  # (H,) over all keys
    value_norm_median: np.ndarray  # (H,)


@dataclass
class KeyTotals:
    """Per-key sums over the conditional-branch calls of one layer (for means over steps and prompts)."""

    received: torch.Tensor  # (H, N)
    visible: torch.Tensor
    key_norm: torch.Tensor
    value_norm: torch.Tensor
    calls: int = 0
    num_queries: int = 0

    def add(self, stats: KeyStats, b: int) -> None:
        self.received += stats.received[b]
        self.visible += stats.visible[b]
        self.key_norm += stats.key_norm[b]
        self.value_norm += stats.value_norm[b]
        self.calls += 1
        self.num_queries = stats.num_queries

    def mean(self) -> KeyStats:
        """The mean over the summed calls, as a one-element batch."""
        n = max(self.calls, 1)
        return KeyStats(
            received=(self.received / n)[None],
            visible=(self.visible / n)[None],
            key_norm=(self.key_norm / n)[None],
            value_norm=(self.value_norm / n)[None],
            num_queries=self.num_queries,
        )


def call_key_stats(call: SdpaCall, chunk_size: int | None) -> KeyStats:
    """The per-key statistics of one SDPA call, computed without autograd."""
    with torch.no_grad():
        return key_stats(
            call.q.detach(),
            call.k.detach(),
            call.v.detach(),
            scale=call.scale,
            attn_mask=call.attn_mask,
            is_causal=call.is_causal,
            chunk_size=chunk_size,
        )


def run_and_measure(call: SdpaCall, chunk_size: int | None) -> tuple[torch.Tensor, KeyStats | None]:
    """The call's own output and its per-key statistics (None for a call they do not cover: not 4-D, or
    with dropout)."""
    out = call.run()
    if call.q.ndim != 4 or call.dropout_p > 0:
        return out, None
    return out, call_key_stats(call, chunk_size)


def top_keys(stats: KeyStats, b: int, count: int) -> dict[str, np.ndarray]:
    """The ``count`` most attended keys per head of batch element b, with their statistics."""
    received = stats.received[b]
    count = min(count, received.shape[-1])
    mass, index = received.topk(count, dim=-1)
    median = sink_baseline(received).unsqueeze(-1)
    return {
        "index": index.numpy(),
        "received": mass.numpy(),
        "ratio": (mass / median).numpy(),
        "key_norm": stats.key_norm[b].gather(-1, index).numpy(),
        "value_norm": stats.value_norm[b].gather(-1, index).numpy(),
        "key_norm_median": stats.key_norm[b].median(dim=-1).values.numpy(),
        "value_norm_median": stats.value_norm[b].median(dim=-1).values.numpy(),
    }


@dataclass(frozen=True)
class SinkCaptureConfig:
    """Where to record key statistics (self-attention layers and steps) and how many top keys per head."""

    where: Selection = field(default_factory=lambda: Selection(kinds=SELF_ONLY))
    top_keys: int = 16
    chunk_size: int | None = None

    def __post_init__(self) -> None:
        if self.top_keys < 1:
            raise ValueError(f"top_keys must be positive, got {self.top_keys}")


class SinkCapture(SessionObserver):
    """Records the key statistics of observed self-attention calls; outputs unchanged."""

    def __init__(self, session: HookSession, config: SinkCaptureConfig) -> None:
        super().__init__(session)
        self.config = config
        self.top_keys = config.top_keys
        self.calls: list[SinkCall] = []
        self.totals: dict[int, KeyTotals] = {}
        self.grid: tuple[int, int, int] | None = None

    def observe(self, call: ObservedCall) -> torch.Tensor:
        state, layer = call.state, call.site.layer
        out, stats = run_and_measure(call.sdpa, self.config.chunk_size)
        if stats is None:
            return out
        self.grid = state.grid
        for b, (branch, sample) in enumerate(call.labels):
            top = top_keys(stats, b, self.top_keys)
            self.calls.append(
                SinkCall(state.generation, state.step, branch, sample, layer, stats.received.shape[-1], **top)
            )
            if branch == "cond":
                totals = self.totals.get(layer)
                if totals is None or totals.received.shape != stats.received[b].shape:
                    zeros = torch.zeros_like(stats.received[b])
                    totals = KeyTotals(zeros.clone(), zeros.clone(), zeros.clone(), zeros.clone())
                    self.totals[layer] = totals
                totals.add(stats, b)
        return out

    def calls_table(self) -> Any:
        """pandas DataFrame: one row per call, batch element, head and top-key rank (CALL_COLUMNS)."""
        import pandas as pd

        if not self.calls:
            return pd.DataFrame({name: [] for name in CALL_COLUMNS})
        parts = []
        for call in self.calls:
            heads, count = call.index.shape
            parts.append(
                {
                    "generation": np.full(heads * count, call.generation),
                    "step": np.full(heads * count, call.step),
                    "branch": np.full(heads * count, call.branch),
                    "sample": np.full(heads * count, call.sample),
                    "layer": np.full(heads * count, call.layer),
                    "head": np.repeat(np.arange(heads), count),
                    "rank": np.tile(np.arange(count), heads),
                    "token_index": call.index.reshape(-1),
                    "received": call.received.reshape(-1),
                    "ratio": call.ratio.reshape(-1),
                    "key_norm": call.key_norm.reshape(-1),
                    "value_norm": call.value_norm.reshape(-1),
                    "key_norm_median": np.repeat(call.key_norm_median, count),
                    "value_norm_median": np.repeat(call.value_norm_median, count),
                    "tokens": np.full(heads * count, call.tokens),
                }
            )
        return pd.DataFrame({name: np.concatenate([p[name] for p in parts]) for name in CALL_COLUMNS})


SINK_CAPTURE = Technique("sink_capture", SinkCapture, hook="vditscope_sinks")


@contextmanager
def sink_capture(
    model_or_pipeline: Any,
    layers: Iterable[int] | None = None,
    steps: Iterable[int] | None = None,
    *,
    top_keys: int = 16,
    chunk_size: int | None = None,
) -> Iterator[SinkCapture]:
    """Record per-key statistics (received attention, key and value norms) of every observed
    self-attention call made inside the block; the model's outputs are its own. Hooks are removed
    on exit, also on errors."""
    where = Selection(
        layers=None if layers is None else frozenset(int(layer) for layer in layers),
        steps=None if steps is None else frozenset(int(s) for s in steps),
        kinds=SELF_ONLY,
    )
    with apply_sink_capture(model_or_pipeline, SinkCaptureConfig(where, top_keys, chunk_size)) as session:
        yield session


def apply_sink_capture(model_or_pipeline: Any, config: SinkCaptureConfig) -> AbstractContextManager[SinkCapture]:
    """Record key statistics of the self-attention calls ``config.where`` selects; yields the ``SinkCapture``."""
    return SINK_CAPTURE.apply(model_or_pipeline, config)
