"""Probes: statistics of your own on every call ``capture`` observes, beside the built-in ones.

A probe is a function of one call, ``probe(call: ProbeCall) -> tensor``, whose result has the batch on its
first axis: (B, H) gives one value per head, which becomes a column of ``cap.table()``; any other shape
(B, ...) is kept on each record's ``probes`` dict. Probes see q, k and v as SDPA does (after the model's
norms and RoPE), run without autograd and never change the model's output. Write them like this::

    def key_norm(call):  # the mean L2 norm of each head's keys
        return call.k.float().norm(dim=-1).mean(dim=-1)  # (B, H)

    with vditscope.capture(pipe, probes={"key_norm": key_norm}) as cap:
        pipe(...)
    cap.table()["key_norm"]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..layout import TokenLayout
from ..stats.basics import masked_logits


@dataclass(frozen=True)
class ProbeCall:
    """What a probe sees of one observed attention call: q, k, v (B, H, N, D) as SDPA gets them (grouped key
    and value heads as they are), the softmax scale, the mask, and where the call is in the model."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    scale: float
    attn_mask: torch.Tensor | None
    is_causal: bool
    layout: TokenLayout | None  # where the video (and text) tokens sit among the keys; None for cross calls
    kind: str  # "self", "cross" or "image"
    layer: int
    step: int
    site: str

    def probabilities(self, queries: slice = slice(None)) -> torch.Tensor:
        """Softmax attention of the chosen queries (B, H, q, Nk), float32, masked as SDPA masks the call (its
        mask, and the causal one at the chosen queries' own positions); a row with no visible key is 0. Only for
        small slices, never all queries of a long video (N x N)."""
        rows = torch.arange(self.q.shape[2], device=self.q.device)[queries]
        q = self.q[:, :, rows].float()
        k = self.k.float()
        if k.shape[1] != q.shape[1]:
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        mask = self.attn_mask
        if mask is not None and mask.shape[-2] > 1:
            mask = mask[..., rows, :]
        scores = masked_logits(q @ k.transpose(-1, -2) * self.scale, mask)
        if self.is_causal:
            keys = torch.arange(k.shape[2], device=k.device)
            scores = scores.masked_fill(keys[None, :] > rows[:, None], float("-inf"))
        return torch.nan_to_num(scores.softmax(dim=-1))


Probe = Callable[[ProbeCall], Any]


def check_probes(probes: Mapping[str, Probe], reserved: set[str]) -> dict[str, Probe]:
    """The probes as a plain dict; a clear error for a name that is not a string, a name a built-in column
    already has, or a probe that is not callable."""
    checked: dict[str, Probe] = {}
    for name, probe in probes.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"a probe's name must be a non-empty string, got {name!r}")
        if name in reserved:
            raise ValueError(f"the probe name {name!r} is a built-in column of the capture table; choose another")
        if not callable(probe):
            raise ValueError(f"the probe {name!r} is not callable")
        checked[name] = probe
    return checked


def probe_values(probes: Mapping[str, Probe], call: ProbeCall) -> list[dict[str, np.ndarray]]:
    """Every probe's result on ``call``, split per batch element: [{name: value of element b}] (numpy)."""
    batch = call.q.shape[0]
    per_element: list[dict[str, np.ndarray]] = [{} for _ in range(batch)]
    for name, probe in probes.items():
        with torch.no_grad():
            value = probe(call)
        array = value.detach().float().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        if array.ndim == 0 or array.shape[0] != batch:
            raise ValueError(
                f"the probe {name!r} returned shape {tuple(array.shape)}; its first axis must be the call's batch "
                f"({batch}), e.g. (B, H) for one value per head"
            )
        for b in range(batch):
            per_element[b][name] = array[b]
    return per_element
