"""`intervene`: change how chosen self-attention calls compute attention (bottom-k or top-p
masking, temperature, structured windows) during a generation, through the same session as capture.

An ``AttentionEdit`` says what to do and where; the first edit that matches a call decides it.
Edited heads are computed by the exact chunked ``sparse_attention`` (or ``structured_attention``,
or the block selection's masked softmax); every other head, call and step keeps the model's own
SDPA output. With ``fast`` (plans), mask edits run block-sparse through compiled FlexAttention
instead, without measuring the dropped mass, and a call whose every head is edited skips the dense
SDPA call: that is where a plan saves time.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import torch

from ..stats.block_sparse import block_sparse_attention
from ..stats.sparsify import sparse_attention
from ..stats.structured import structured_attention
from .calls import ObservedCall
from .edits import BRANCHES, AttentionEdit
from .selection import SELF_ONLY, Selection
from .session import HookSession, SessionObserver, Technique

__all__ = [
    "BRANCHES",
    "AttentionEdit",
    "DropTotals",
    "EditRecord",
    "Intervention",
    "InterventionConfig",
    "apply_intervention",
    "intervene",
]


@dataclass(frozen=True)
class InterventionConfig:
    """The edits to apply (the first that matches a call decides it), the chunk size, and whether
    mask edits take the fast block-sparse path (no dropped-mass measurement)."""

    edits: tuple[AttentionEdit, ...] = ()
    chunk_size: int | None = None
    fast: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "edits", tuple(self.edits))

    @property
    def where(self) -> Selection:
        """Every self-attention call: the totals count them all; the edits pick their own calls."""
        return Selection(kinds=SELF_ONLY)

    def edit_for(self, layer: int, step: int, branch: str) -> AttentionEdit | None:
        """The first matching edit, or None when none matches or it changes nothing."""
        for edit in self.edits:
            if edit.matches(layer, step, branch):
                return None if edit.is_identity else edit
        return None


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


class Intervention(SessionObserver):
    """Computes the edited heads of matching calls; counts what was dropped over all self-attention."""

    def __init__(self, session: HookSession, config: InterventionConfig) -> None:
        super().__init__(session)
        for edit in config.edits:
            session.check_layers(edit.layers)
        self.config = config
        self.edits = list(config.edits)
        self.chunk_size = config.chunk_size
        self.edit_records: list[EditRecord] = []
        self.totals = DropTotals()

    def edit_table(self) -> Any:
        """pandas DataFrame: one row per edited call, batch element and head."""
        import pandas as pd

        columns = list(EditRecord.__dataclass_fields__)
        return pd.DataFrame([asdict(r) for r in self.edit_records], columns=columns)

    def finish(self) -> None:
        """Under context parallelism: every rank's edit records (its heads) and drop totals, on every rank."""
        shards = self.session.shards
        if shards is None:
            return
        records = [record for part in shards.gather_lists(self.edit_records) for record in part]
        self.edit_records = sorted(records, key=lambda r: (r.generation, r.step, r.branch, r.layer, r.head))
        totals = shards.gather_lists([self.totals])
        self.totals = DropTotals(*(sum(getattr(t[0], name) for t in totals) for name in asdict(self.totals)))

    def _chosen_heads(self, edit: AttentionEdit, local: int) -> list[tuple[int, int]]:
        """(index in the call, model head) of the heads ``edit`` changes in a call holding ``local`` heads
        (under Ulysses context parallelism, this rank's share)."""
        shards = self.session.shards
        if shards is None:
            return [(head, head) for head in edit.where.head_indices(local)]
        return shards.local_heads(edit.where.head_indices(local * shards.degree), local)

    def observe(self, call: ObservedCall) -> torch.Tensor:
        sdpa = call.sdpa
        q, k = sdpa.q, sdpa.k
        if q.ndim != 4:
            return call.run()
        batch, heads, num_q = q.shape[:3]
        self.totals.entries += float(batch * heads * num_q * k.shape[2])
        self.totals.rows += float(batch * heads * num_q)
        labels = call.labels
        edits = [self.config.edit_for(call.site.layer, call.state.step, branch) for branch, _ in labels]
        if not any(edits):
            return call.run()
        if sdpa.dropout_p > 0 or sdpa.is_causal or (torch.is_grad_enabled() and q.requires_grad):
            self.session.note(
                f"{call.site.name}: an edit needs inference without dropout or a causal mask; call left unedited"
            )
            return call.run()
        if self._replaces_call(call, edits):
            out = torch.empty((*q.shape[:-1], sdpa.v.shape[-1]), dtype=q.dtype, device=q.device)
        else:
            out = call.run().clone()
        for b, edit in enumerate(edits):
            if edit is not None:
                self._edit_element(call, b, edit, out)
        return out

    def _replaces_call(self, call: ObservedCall, edits: list[AttentionEdit | None]) -> bool:
        """True when the fast path computes every head of every batch element: no dense call needed."""
        heads = call.sdpa.q.shape[1]
        return (
            self.config.fast
            and call.sdpa.attn_mask is None
            and all(
                edit is not None and edit.mask is not None and len(self._chosen_heads(edit, heads)) == heads
                for edit in edits
            )
        )

    def _masked(
        self, edit: AttentionEdit, parts: tuple[torch.Tensor, ...], layout: Any, scale: float | None
    ) -> tuple[torch.Tensor, Any, list[str]]:
        """A mask edit of one batch element's chosen heads: (out, SparsityStats, kinds per head)."""
        run = _masked_method(self.config.fast, self.chunk_size, edit)
        return run(*parts, layout=layout, kind=edit.mask, window=edit.window, scale=scale, temperature=edit.temperature)

    def _edit_element(self, call: ObservedCall, b: int, edit: AttentionEdit, out: torch.Tensor) -> None:
        """Write the edited heads of batch element ``b`` into ``out`` and record what they dropped."""
        sdpa, site, state = call.sdpa, call.site, call.state
        q, k, v = sdpa.q, sdpa.k, sdpa.v
        pairs = self._chosen_heads(edit, q.shape[1])
        if not pairs:
            return
        chosen = [head for _, head in pairs]
        index = torch.tensor([position for position, _ in pairs], device=q.device)
        kv_index = index // (q.shape[1] // k.shape[1])
        parts = (q[b : b + 1, index], k[b : b + 1, kv_index], v[b : b + 1, kv_index])
        kinds = [edit.mask or ""] * len(chosen)
        with torch.no_grad():
            if edit.mask is not None:
                if sdpa.attn_mask is not None:
                    self.session.note(
                        f"{site.name}: a structured mask on a call with its own mask is not supported; left"
                    )
                    return
                layout = self.adapter.layout(state.grid, k.shape[2])
                edited, dropped, kinds = self._masked(edit, parts, layout, sdpa.scale)
            else:
                edited, dropped = sparse_attention(
                    *parts,
                    scale=sdpa.scale,
                    bottom_k=edit.bottom_k,
                    top_p=edit.top_p,
                    temperature=edit.temperature,
                    attn_mask=_mask_rows(sdpa.attn_mask, b, index),
                    chunk_size=self.chunk_size,
                )
        out[b : b + 1, index] = edited.to(out.dtype)
        mass = dropped["mass_dropped"][0].double().cpu()
        share = dropped["entries_dropped"][0].double().cpu()
        num_q, num_k = q.shape[2], k.shape[2]
        self.totals.mass += float(mass.sum()) * num_q
        self.totals.dropped += float(share.sum()) * num_q * num_k
        branch = call.labels[b][0]
        for position, head in enumerate(chosen):
            self.edit_records.append(
                EditRecord(
                    state.generation,
                    state.step,
                    branch,
                    site.layer,
                    head,
                    float(mass[position]),
                    float(share[position]),
                    kinds[position],
                )
            )


def _masked_method(fast: bool, chunk_size: int | None, edit: AttentionEdit) -> Any:
    """The function that computes a mask edit: block-sparse FlexAttention on the fast path (no mass
    measured), the block selection's exact masked softmax for ``blocks``, else ``structured_attention``."""
    if fast or edit.mask == "blocks":
        return partial(
            block_sparse_attention,
            block_mass=edit.block_mass,
            measure=not fast,
            backend="flex" if fast else "torch",
        )
    return partial(structured_attention, chunk_size=chunk_size)


def _mask_rows(mask: torch.Tensor | None, b: int, heads: torch.Tensor) -> torch.Tensor | None:
    """The part of an SDPA mask (broadcastable to (B, H, Nq, Nk)) for batch element b and some heads."""
    if mask is None:
        return None
    while mask.ndim < 4:
        mask = mask.unsqueeze(0)
    mask = mask[b : b + 1] if mask.shape[0] > 1 else mask
    return mask[:, heads] if mask.shape[1] > 1 else mask


INTERVENE = Technique("intervene", Intervention)


@contextmanager
def intervene(
    model_or_pipeline: Any,
    edits: Iterable[AttentionEdit],
    *,
    chunk_size: int | None = None,
    fast: bool = False,
) -> Iterator[Intervention]:
    """Apply the edits to every matching self-attention call made inside the block.

    The yielded object counts what was dropped: ``totals`` (entries and mass over all self-attention
    calls; with ``fast`` the mass is not measured and reads NaN) and ``edit_table()`` (per edited
    call and head). Hooks are removed on exit, also on errors.
    """
    with apply_intervention(model_or_pipeline, InterventionConfig(tuple(edits), chunk_size, fast)) as session:
        yield session


def apply_intervention(model_or_pipeline: Any, config: InterventionConfig) -> AbstractContextManager[Intervention]:
    """Apply the config's edits to the self-attention calls made in the block; yields the ``Intervention``."""
    return INTERVENE.apply(model_or_pipeline, config)
