"""`record_sink_sets`: the sinks of every self-attention call of an unchanged generation, per head.

A sink ablation that detects sinks on its own, ablated, trajectory hides other keys at every step than
the unchanged model would have, and its random control (drawn per call among the non-sinks) is not
matched in count to anything fixed. Recording the sink sets of the dense run first fixes both: the
ablation hides exactly the dense run's sinks of each call and head, and the control exactly as many
random keys of the same call and head (``SinkAblationConfig.sink_sets``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import VditscopeError
from ..thresholds import SINK_RATIO
from .calls import ObservedCall
from .selection import SELF_ONLY, Selection
from .session import HookSession, SessionObserver, Technique
from .sink_capture import run_and_measure

CallKey = tuple[int, str, int, int]  # (step, branch, sample, layer) of one batch element of one call


@dataclass
class SinkSets:
    """The sink keys of each head of every recorded call: ``sets[(step, branch, sample, layer)]`` holds one
    array of key indices per head, ``num_keys`` the call's key count."""

    sets: dict[CallKey, list[np.ndarray]] = field(default_factory=dict)
    num_keys: dict[CallKey, int] = field(default_factory=dict)

    def mask(self, key: CallKey, heads: int, num_keys: int) -> torch.Tensor:
        """(H, Nk) bool of the recorded sinks of one call; a clear error for a call the dense run did not make."""
        if key not in self.sets:
            step, branch, sample, layer = key
            raise VditscopeError(
                f"the dense run recorded no sink set for step {step}, {branch} branch, sample {sample}, layer {layer}: "
                "the ablated generation must make the same attention calls as the recorded one"
            )
        if self.num_keys[key] != num_keys or len(self.sets[key]) != heads:
            raise VditscopeError(
                f"the recorded sink set of {key} has {len(self.sets[key])} heads x {self.num_keys[key]} keys; "
                f"the call has {heads} x {num_keys}"
            )
        chosen = torch.zeros(heads, num_keys, dtype=torch.bool)
        for head, index in enumerate(self.sets[key]):
            chosen[head, torch.from_numpy(index).long()] = True
        return chosen

    def per_head(self) -> float:
        """Mean number of sinks per recorded call and head."""
        counts = [len(index) for heads in self.sets.values() for index in heads]
        return float(np.mean(counts)) if counts else 0.0


@dataclass(frozen=True)
class SinkSetConfig:
    """Which self-attention calls to record (layers) and the sink threshold (ratio to the sink baseline)."""

    where: Selection = field(default_factory=lambda: Selection(kinds=SELF_ONLY))
    threshold: float = SINK_RATIO
    chunk_size: int | None = None


class SinkSetRecorder(SessionObserver):
    """Records the sink keys of each observed call and head; outputs unchanged."""

    def __init__(self, session: HookSession, config: SinkSetConfig) -> None:
        super().__init__(session)
        self.config = config
        self.sets = SinkSets()

    def observe(self, call: ObservedCall) -> torch.Tensor:
        state, layer = call.state, call.site.layer
        out, stats = run_and_measure(call.sdpa, self.config.chunk_size)
        if stats is None:
            return out
        sinks = stats.sinks(self.config.threshold).cpu()
        for b, (branch, sample) in enumerate(call.labels):
            key = (state.step, branch, sample, layer)
            self.sets.sets[key] = [torch.nonzero(row).flatten().numpy().astype(np.int32) for row in sinks[b]]
            self.sets.num_keys[key] = int(sinks.shape[-1])
        return out


SINK_SETS = Technique("record_sink_sets", SinkSetRecorder, hook="vditscope_sink_sets")


@contextmanager
def record_sink_sets(
    model_or_pipeline: Any,
    layers: Iterable[int] | None = None,
    *,
    threshold: float = SINK_RATIO,
    chunk_size: int | None = None,
) -> Iterator[SinkSetRecorder]:
    """Record the sinks of every self-attention call of the chosen layers (None = all) made inside the block
    (``recorder.sets``); the model's outputs are unchanged and its hooks removed on exit."""
    where = Selection(layers=None if layers is None else frozenset(int(layer) for layer in layers), kinds=SELF_ONLY)
    with apply_sink_sets(model_or_pipeline, SinkSetConfig(where, threshold, chunk_size)) as recorder:
        yield recorder


def apply_sink_sets(model_or_pipeline: Any, config: SinkSetConfig) -> AbstractContextManager[SinkSetRecorder]:
    """Record the sink sets of the self-attention calls ``config.where`` selects; yields the recorder."""
    return SINK_SETS.apply(model_or_pipeline, config)
