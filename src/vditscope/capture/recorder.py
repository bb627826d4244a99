"""`capture`: record attention statistics of every observed attention call of a generation.

The technique in the hook shape: ``CaptureConfig`` (where and what to keep), the ``Capture``
observer (runs the streaming statistics on each call and keeps one record per batch element) and
``apply_capture``; ``capture`` is the keyword form.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from ..adapters import AttentionSite
from ..layout import TokenLayout
from ..stats import attention_stats
from ..stats.basics import checked_scale
from ..stats.streaming import TopMassMode
from ..stats.text_tiles import text_tile_map
from .calls import ObservedCall, SdpaCall
from .context_parallel import merge_head_shards, rank_share
from .probes import Probe, ProbeCall, check_probes, probe_values
from .records import TABLE_COLUMNS, CallRecord, records_from_stats, records_table
from .selection import Selection
from .session import HookSession, SessionObserver, Technique
from .state import ForwardState


@dataclass(frozen=True)
class CaptureConfig:
    """What ``capture`` records: ``where`` (layers, steps, site kinds), the top-mass mode, the fused
    path, the chunk size, which maps to keep (see ``capture``) and the statistics backend ("auto":
    the Triton kernel on CUDA, the torch path elsewhere)."""

    where: Selection = field(default_factory=Selection)
    top_mass: TopMassMode = "auto"
    fused: bool = False
    chunk_size: int | None = None
    keep_maps: bool = True
    map_tiles: int | None = None
    map_steps: frozenset[int] | None = None
    backend: str = "auto"
    probes: Mapping[str, Probe] = field(default_factory=dict)  # your own statistics (capture/probes.py)

    def __post_init__(self) -> None:
        object.__setattr__(self, "probes", check_probes(self.probes, set(TABLE_COLUMNS)))
        if self.map_tiles is not None and self.map_tiles < 1:
            raise ValueError(f"map_tiles must be positive, got {self.map_tiles}")
        if self.map_steps is not None:
            object.__setattr__(self, "map_steps", frozenset(int(s) for s in self.map_steps))

    def tiles_at(self, step: int) -> int | None:
        """Token-map tiles for a call at this step: only when maps are kept and the step is chosen."""
        if not self.keep_maps or self.map_tiles is None:
            return None
        return self.map_tiles if self.map_steps is None or step in self.map_steps else None


class Capture(SessionObserver):
    """Statistics recorded inside a ``capture`` block; ``table()`` gives one row per call, branch, head."""

    def __init__(self, session: HookSession, config: CaptureConfig) -> None:
        super().__init__(session)
        self.config = config
        self.records: list[CallRecord] = []
        self.backends: set[str] = set()  # which statistics path ran ("torch", "triton")

    def table(self) -> Any:
        """A pandas DataFrame: one row per generation, step, branch, sample, layer, site kind and head."""
        return records_table(self.records)

    def _repr_html_(self) -> str:
        """A notebook summary: what was observed, and the mean statistics per layer and site kind."""
        from markupsafe import Markup

        table = self.table()
        facts = {
            "family": self.family,
            "calls recorded": len(self.records),
            "steps": ", ".join(str(s) for s in sorted(set(table["step"]))) or "none",
            "statistics": ", ".join(sorted(self.backends)) or "none yet",
            "notes": "; ".join(self.notes) or "none",
        }
        rows = Markup("").join(Markup("<tr><th style='text-align:left'>{}</th><td>{}</td></tr>").format(k, v)
                               for k, v in facts.items())  # fmt: skip
        columns = ["entropy", "text_mass", "sink_ratio", "same_frame_mass", "same_position_mass"]
        means = table.groupby(["layer", "kind"])[columns].mean().round(3) if len(table) else table[columns]
        return str(
            Markup("<div class='vditscope-capture'><p><b>vditscope capture</b> ({} rows in <code>table()</code>)</p>"
                   "<table>{}</table><p>means per layer and site kind:</p>{}</div>").format(
                len(table), rows, Markup(means.to_html(escape=True))
            )
        )  # fmt: skip

    def observe(self, call: ObservedCall) -> torch.Tensor:
        return self._observe(call.site, call.state, call.start, call.sdpa)

    def finish(self) -> None:
        """Under context parallelism: every rank's records, merged into records of every head, on every rank."""
        shards = self.session.shards
        if shards is not None:
            self.records = merge_head_shards(shards.gather_lists(self.records))
            self.backends = {name for names in shards.gather_lists(sorted(self.backends)) for name in names}

    def _observe(self, site: AttentionSite, state: ForwardState, start: int, call: SdpaCall) -> torch.Tensor:
        """Run one SDPA call of an observed site and record its statistics (``start``: the call's first
        batch row within the forward, for the CFG labels)."""
        q, k, v = call.q, call.k, call.v
        if call.dropout_p > 0 or q.ndim != 4:
            self.session.note(f"{site.name}: SDPA call with dropout or non-4D inputs is not observed")
            return call.run()
        config = self.config
        layout = self.adapter.layout(state.grid, k.shape[2]) if site.kind == "self" else None
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
        shards = self.session.shards
        fused = config.fused and not needs_grad and shards is None
        out = None if fused else call.run()
        attn_mask = call.attn_mask
        if shards is not None:  # this rank's share of the heads, over every query
            share = rank_share(shards, q, k, v, attn_mask, getattr(site.module, "heads", q.shape[1] * shards.degree))
            q, k, v, attn_mask = share.q, share.k, share.v, share.attn_mask
        with torch.no_grad():
            fused_out, stats = attention_stats(
                q.detach(),
                k.detach(),
                v.detach(),
                scale=call.scale,
                layout=layout,
                chunk_size=config.chunk_size,
                attn_mask=attn_mask,
                is_causal=call.is_causal,
                top_mass=config.top_mass,
                compute_output=fused,
                map_tiles=config.tiles_at(state.step) if layout is not None else None,
                backend=config.backend,
            )
        self.backends.add(getattr(stats, "backend", "torch"))
        labels = call.labels(state, start)
        records = records_from_stats(stats, site, state, labels, layout, keep_maps=config.keep_maps)
        tiles = config.tiles_at(state.step)
        if tiles is not None:
            text_tiles = text_tiles_of(q, k, attn_mask, call.scale, site.kind, layout, state.grid, tiles)
            for b, record in enumerate(records if text_tiles is not None else []):
                record.maps["text_tile_map"] = text_tiles[b].cpu()
        if config.probes:
            seen = ProbeCall(q.detach(), k.detach(), v.detach(), checked_scale(call.scale, q.shape[-1]), attn_mask,
                             call.is_causal, layout, site.kind, site.layer, state.step, site.name)  # fmt: skip
            for record, values in zip(records, probe_values(config.probes, seen), strict=True):
                record.probes.update(values)
        self.records.extend(records)
        return fused_out if fused else out


def text_tiles_of(
    q: torch.Tensor,
    k: torch.Tensor,
    attn_mask: torch.Tensor | None,
    scale: float | None,
    kind: str,
    layout: TokenLayout | None,
    grid: tuple[int, int, int] | None,
    tiles: int,
) -> torch.Tensor | None:
    """The mass each tile of video queries puts on each text key (B, H, T, L) for a cross call (every key a
    text token, the queries the video grid) or a joint call with text keys; None for other calls."""
    if kind == "cross" and grid is not None:
        video = TokenLayout(*grid)
        if q.shape[2] != video.num_video:
            return None
        queries, text = slice(0, video.num_video), slice(0, k.shape[2])
    elif kind == "self" and layout is not None and layout.text is not None and layout.num_text > 0:
        video, queries, text = layout, slice(layout.video_start, layout.video_stop), slice(*layout.text)
    else:
        return None
    tile_size, count = video.tiles(tiles)
    with torch.no_grad():
        return text_tile_map(q.detach(), k.detach(), queries=queries, text=text, tile_size=tile_size, tiles=count,
                             scale=scale, attn_mask=attn_mask)  # fmt: skip


CAPTURE = Technique("capture", Capture)


@contextmanager
def capture(
    model_or_pipeline: Any,
    layers: Iterable[int] | None = None,
    steps: Iterable[int] | None = None,
    *,
    top_mass: TopMassMode = "auto",
    fused: bool = False,
    chunk_size: int | None = None,
    keep_maps: bool = True,
    cross_attention: bool = True,
    map_tiles: int | None = None,
    map_steps: Iterable[int] | None = None,
    backend: str = "auto",
    probes: Mapping[str, Probe] | None = None,
) -> Iterator[Capture]:
    """Record attention statistics of every observed attention call made inside the block.

    ``layers``/``steps``: video layer indices and denoising steps to observe (None = all); the
    others run through the model's own path untouched. By default the model receives the output
    of its own SDPA call (bit-identical to a run without capture) and the statistics come from a
    second, output-free pass; ``fused=True`` hands it the output of the statistics pass instead
    (one attention instead of two, equal to SDPA within float rounding). ``keep_maps`` keeps
    per-head frame maps, locality profiles and text masses on each record (small tensors);
    ``map_tiles`` T adds a T x T tile-pooled token map of the video tokens (``token_map``) at the
    ``map_steps`` (None = every observed step). ``backend``: "auto" runs the statistics as one Triton
    kernel on CUDA and the chunked torch path elsewhere; "torch" or "triton" force one (``backends``
    says which ran). ``cross_attention``: also record the cross-attention calls, kind "cross" (text
    keys) and, in an image-to-video Wan, "image" (its CLIP image tokens). A Wan 2.2 pipeline's two
    experts share the layers 0..L-1; the ``site`` column names the low-noise one's ``transformer_2.blocks.i...``.
    ``probes``: your own statistics, name -> function of a ``ProbeCall`` (q, k, v, scale, mask, layout, where);
    a (B, H) result becomes a table column, any other (B, ...) stays on ``record.probes`` (capture/probes.py).
    """
    where = Selection(
        layers=None if layers is None else frozenset(int(layer) for layer in layers),
        steps=None if steps is None else frozenset(int(s) for s in steps),
        kinds=None if cross_attention else frozenset({"self"}),
    )
    chosen_maps = None if map_steps is None else frozenset(int(s) for s in map_steps)
    config = CaptureConfig(
        where, top_mass, fused, chunk_size, keep_maps, map_tiles, chosen_maps, backend, dict(probes or {})
    )
    with apply_capture(model_or_pipeline, config) as session:
        yield session


def apply_capture(model_or_pipeline: Any, config: CaptureConfig) -> AbstractContextManager[Capture]:
    """Record statistics of the calls ``config.where`` selects in the block; yields the ``Capture``."""
    return CAPTURE.apply(model_or_pipeline, config)
