"""`intervene`: change how chosen self-attention calls compute attention (bottom-k or top-p
masking, temperature) during a generation, through the same hooks and SDPA routing as capture.

An ``AttentionEdit`` says what to do and where (layers, heads, a step range, CFG branches); the
first edit that matches a call decides it. Edited heads are computed by the exact chunked
``sparse_attention``; every other head, call and step keeps the model's own SDPA output.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..adapters import AttentionSite, FamilyAdapter, adapter_for
from ..stats.sparsify import check_sparsity, sparse_attention
from ..stats.structured import check_window, structured_attention
from .session import Capture, ForwardState, SdpaCall, attached, checked_site_layers, transformers_of

BRANCHES = ("cond", "uncond")


@dataclass(frozen=True)
class AttentionEdit:
    """What to change (bottom_k, top_p, temperature) and where (None = everywhere).

    ``steps`` is a half-open range [start, stop) of denoising steps; ``branches`` a subset of
    {"cond", "uncond"}; ``heads`` query-head indices. ``mask`` picks a structured window
    (spatial, temporal, tiles, svg; see ``stats/structured.py``) with optional half-widths
    ``window`` = (frames, rows, columns); it combines with a temperature, not with bottom_k/top_p.
    """

    bottom_k: float = 0.0
    top_p: float | None = None
    temperature: float = 1.0
    layers: frozenset[int] | None = None
    heads: frozenset[int] | None = None
    steps: tuple[int, int] | None = None
    branches: frozenset[str] | None = None
    mask: str | None = None
    window: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        check_sparsity(self.bottom_k, self.top_p, self.temperature)
        if self.mask is not None:
            window = check_window(self.mask, self.window)
            object.__setattr__(self, "window", window)
            if self.bottom_k > 0 or self.top_p is not None:
                raise ValueError("a structured mask combines with a temperature, not with bottom_k or top_p")
        elif self.window is not None:
            raise ValueError("a window needs a mask kind (spatial, temporal or tiles)")
        for name in ("layers", "heads", "branches"):
            value = getattr(self, name)
            if value is not None:
                if not value:
                    raise ValueError(f"the {name[:-1]} set of an edit is empty")
                object.__setattr__(self, name, frozenset(value))
        if self.branches is not None and not self.branches <= set(BRANCHES):
            raise ValueError(f"branches must be among {', '.join(BRANCHES)}, got {sorted(self.branches)}")
        if self.steps is not None:
            start, stop = (int(s) for s in self.steps)
            if not 0 <= start < stop:
                raise ValueError(f"a step range must be start < stop with start >= 0, got {self.steps}")
            object.__setattr__(self, "steps", (start, stop))

    @property
    def is_identity(self) -> bool:
        return self.bottom_k == 0 and self.top_p is None and self.temperature == 1.0 and self.mask is None

    def matches(self, layer: int, step: int, branch: str) -> bool:
        return (
            (self.layers is None or layer in self.layers)
            and (self.steps is None or self.steps[0] <= step < self.steps[1])
            and (self.branches is None or branch in self.branches)
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (sets as sorted lists), the inverse of ``from_dict``."""
        data = asdict(self)
        for name in ("layers", "heads", "branches"):
            if data[name] is not None:
                data[name] = sorted(data[name])
        for name in ("steps", "window"):
            if data[name] is not None:
                data[name] = list(data[name])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AttentionEdit:
        values = dict(data)
        for name in ("layers", "heads", "branches"):
            if values.get(name) is not None:
                values[name] = frozenset(values[name])
        for name in ("steps", "window"):
            if values.get(name) is not None:
                values[name] = tuple(values[name])
        return cls(**values)


@dataclass
class EditRecord:
    """What one edited call dropped, per batch element and edited head."""

    generation: int
    step: int
    branch: str
    layer: int
    head: int
    mass_dropped: float
    entries_dropped: float
    mask: str = ""


@dataclass
class DropTotals:
    """Attention entries of every observed self-attention call, and how many of them were dropped."""

    entries: float = 0.0
    dropped: float = 0.0
    mass: float = 0.0  # attention mass dropped, summed over query rows
    rows: float = 0.0  # query rows observed

    @property
    def sparsity(self) -> float:
        """Share of all self-attention entries that were dropped."""
        return self.dropped / self.entries if self.entries else 0.0

    @property
    def mass_dropped(self) -> float:
        """Mean over all self-attention query rows of the attention mass dropped."""
        return self.mass / self.rows if self.rows else 0.0


class Intervention(Capture):
    """Hooks that compute the edited heads of matching calls with ``sparse_attention``."""

    hook_name = "vditscope_intervene"
    session_name = "intervene"

    def __init__(
        self,
        models: list[nn.Module],
        adapter: FamilyAdapter,
        sites: list[AttentionSite],
        edits: list[AttentionEdit],
        chunk_size: int | None,
    ) -> None:
        super().__init__(
            models, adapter, sites, steps=None, top_mass="off", fused=False, chunk_size=chunk_size, keep_maps=False
        )
        self.edits = edits
        self.edit_records: list[EditRecord] = []
        self.totals = DropTotals()

    def edit_table(self) -> Any:
        """pandas DataFrame: one row per edited call, batch element and head."""
        import pandas as pd

        columns = list(EditRecord.__dataclass_fields__)
        return pd.DataFrame([asdict(r) for r in self.edit_records], columns=columns)

    def _edit_for(self, layer: int, step: int, branch: str) -> AttentionEdit | None:
        for edit in self.edits:
            if edit.matches(layer, step, branch):
                return None if edit.is_identity else edit
        return None

    def _observe(self, site: AttentionSite, state: ForwardState, start: int, call: SdpaCall) -> torch.Tensor:
        q, k, v, attn_mask, scale = call.q, call.k, call.v, call.attn_mask, call.scale
        if site.kind != "self" or q.ndim != 4:
            return call.run()
        batch, heads, num_q = q.shape[:3]
        self.totals.entries += float(batch * heads * num_q * k.shape[2])
        self.totals.rows += float(batch * heads * num_q)
        labels = call.labels(state, start)
        edits = [self._edit_for(site.layer, state.step, branch) for branch, _ in labels]
        if not any(edits):
            return call.run()
        if call.dropout_p > 0 or call.is_causal or (torch.is_grad_enabled() and q.requires_grad):
            self._note(f"{site.name}: an edit needs inference without dropout or a causal mask; call left unedited")
            return call.run()
        out = call.run().clone()
        group = heads // k.shape[1]
        for b, edit in enumerate(edits):
            if edit is None:
                continue
            chosen = sorted(h for h in (edit.heads or range(heads)) if 0 <= h < heads)
            if not chosen:
                continue
            index = torch.tensor(chosen, device=q.device)
            kv_index = index // group
            kinds = [edit.mask or ""] * len(chosen)
            with torch.no_grad():
                if edit.mask is not None:
                    if attn_mask is not None:
                        self._note(f"{site.name}: a structured mask on a call with its own mask is not supported; left")
                        continue
                    edited, dropped, kinds = structured_attention(
                        q[b : b + 1, index],
                        k[b : b + 1, kv_index],
                        v[b : b + 1, kv_index],
                        layout=self.adapter.layout(state.grid, k.shape[2]),
                        kind=edit.mask,
                        window=edit.window,
                        scale=scale,
                        temperature=edit.temperature,
                        chunk_size=self.chunk_size,
                    )
                else:
                    edited, dropped = sparse_attention(
                        q[b : b + 1, index],
                        k[b : b + 1, kv_index],
                        v[b : b + 1, kv_index],
                        scale=scale,
                        bottom_k=edit.bottom_k,
                        top_p=edit.top_p,
                        temperature=edit.temperature,
                        attn_mask=_mask_rows(attn_mask, b, index),
                        chunk_size=self.chunk_size,
                    )
            out[b : b + 1, index] = edited.to(out.dtype)
            mass = dropped["mass_dropped"][0].double().cpu()
            share = dropped["entries_dropped"][0].double().cpu()
            self.totals.mass += float(mass.sum()) * num_q
            self.totals.dropped += float(share.sum()) * num_q * k.shape[2]
            for position, head in enumerate(chosen):
                self.edit_records.append(
                    EditRecord(
                        generation=state.generation,
                        step=state.step,
                        branch=labels[b][0],
                        layer=site.layer,
                        head=head,
                        mass_dropped=float(mass[position]),
                        entries_dropped=float(share[position]),
                        mask=kinds[position],
                    )
                )
        return out


def _mask_rows(mask: torch.Tensor | None, b: int, heads: torch.Tensor) -> torch.Tensor | None:
    """The part of an SDPA mask (broadcastable to (B, H, Nq, Nk)) for batch element b and some heads."""
    if mask is None:
        return None
    while mask.ndim < 4:
        mask = mask.unsqueeze(0)
    mask = mask[b : b + 1] if mask.shape[0] > 1 else mask
    return mask[:, heads] if mask.shape[1] > 1 else mask


@contextmanager
def intervene(
    model_or_pipeline: Any,
    edits: Iterable[AttentionEdit],
    *,
    chunk_size: int | None = None,
) -> Iterator[Intervention]:
    """Apply the edits to every matching self-attention call made inside the block.

    The yielded object counts what was dropped: ``totals`` (entries and mass over all self-attention
    calls) and ``edit_table()`` (per edited call and head). Hooks are removed on exit, also on errors.
    """
    edits = list(edits)
    models, scheduler = transformers_of(model_or_pipeline)
    adapter = adapter_for(models[0])
    sites = [site for model in models for site in adapter.sites(model) if site.kind == "self"]
    for edit in edits:
        checked_site_layers(edit.layers, sites)
    session = Intervention(models, adapter, sites, edits, chunk_size)
    with attached(session, models, scheduler):
        yield session
