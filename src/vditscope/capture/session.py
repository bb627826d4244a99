"""`capture`: record attention statistics of every observed attention call of a generation.

Hooks around the transformer (which forward: step, CFG branch, video grid) and around each
selected attention module (which layer) route that module's torch SDPA calls to the streaming
statistics. Everything is removed on exit, also when the block raises.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..adapters import AttentionSite, FamilyAdapter, adapter_for
from ..adapters.base import hidden_states_arg
from ..errors import VditscopeError
from ..stats import attention_stats
from ..stats.streaming import TopMassMode
from .hooks import AroundHook, ContextAroundHook, attach, invalidate_registry_cache
from .records import CallRecord, records_from_stats, records_table
from .sdpa_patch import routed_sdpa, sdpa_handler
from .state import ForwardState

HOOK_NAME = "vditscope_capture"


_forward: ContextVar[ForwardState | None] = ContextVar("vditscope_forward", default=None)


@dataclass
class SdpaCall:
    """One routed torch SDPA call: its tensors and options, and the SDPA to run it with."""

    original: Callable[..., torch.Tensor]
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    attn_mask: torch.Tensor | None
    dropout_p: float
    is_causal: bool
    scale: float | None
    enable_gqa: bool

    @property
    def kwargs(self) -> dict[str, Any]:
        """The options as SDPA keyword arguments."""
        kwargs = {
            "attn_mask": self.attn_mask,
            "dropout_p": self.dropout_p,
            "is_causal": self.is_causal,
            "scale": self.scale,
        }
        if self.enable_gqa:
            kwargs["enable_gqa"] = True
        return kwargs

    def run(self) -> torch.Tensor:
        """The call as the model made it."""
        return self.original(self.q, self.k, self.v, **self.kwargs)

    def labels(self, state: ForwardState, start: int) -> list[tuple[str, int]]:
        """(branch, sample) of each batch element, the call's first element being batch row ``start``."""
        return [state.labels[(start + i) % len(state.labels)] for i in range(self.q.shape[0])]


@dataclass
class StepClock:
    """Denoising step and generation counters, driven by the scheduler when a pipeline is given."""

    driven_by_scheduler: bool = False
    generation: int = 0
    step: int = 0
    calls: dict[str, int] = field(default_factory=dict)
    started: bool = False

    def set_timesteps(self) -> None:
        self.generation += 1 if self.started else 0
        self.started = True
        self.step = 0

    def scheduler_step(self) -> None:
        self.step += 1

    def forward_step(self, branch_key: str) -> int:
        """Step of a transformer forward: the scheduler's count, or the call count of a bare model."""
        if self.driven_by_scheduler:
            return self.step
        step = self.calls.get(branch_key, 0)
        self.calls[branch_key] = step + 1
        return step


def branch_labels(context_name: str | None, batch: int) -> list[tuple[str, int]]:
    """CFG branch and sample index of each batch element, from the pipeline's cache_context name."""
    if context_name == "cond_uncond" and batch % 2 == 0:
        half = batch // 2
        return [("uncond", i) for i in range(half)] + [("cond", i) for i in range(half)]
    branch = "uncond" if context_name == "uncond" else "cond"
    return [(branch, i) for i in range(batch)]


def _native_backend_names() -> set[str]:
    from diffusers.models.attention_dispatch import AttentionBackendName

    return {name.value for name in AttentionBackendName if name.value.lstrip("_").startswith("native")}


class Capture:
    """Statistics recorded inside a ``capture`` block; ``table()`` gives one row per call, branch, head."""

    hook_name = HOOK_NAME
    session_name = "capture"  # the function that opens this kind of session, for error messages

    def __init__(
        self,
        models: list[nn.Module],
        adapter: FamilyAdapter,
        sites: list[AttentionSite],
        *,
        steps: set[int] | None,
        top_mass: TopMassMode,
        fused: bool,
        chunk_size: int | None,
        keep_maps: bool,
        map_tiles: int | None = None,
        map_steps: set[int] | None = None,
    ) -> None:
        self.models = models
        self.adapter = adapter
        self.sites = sites
        self.steps = steps
        self.top_mass = top_mass
        self.fused = fused
        self.chunk_size = chunk_size
        self.keep_maps = keep_maps
        self.map_tiles = map_tiles
        self.map_steps = map_steps
        self.clock = StepClock()
        self.records: list[CallRecord] = []
        self.notes: list[str] = []

    @property
    def family(self) -> str:
        return self.adapter.family

    @property
    def num_layers(self) -> int:
        return len({site.layer for site in self.sites})

    def table(self) -> Any:
        """A pandas DataFrame: one row per generation, step, branch, sample, layer, site kind and head."""
        return records_table(self.records)

    # -- hooks -------------------------------------------------------------------------------
    def _around_transformer(self, hook_ref: list[ContextAroundHook]) -> Callable[..., Any]:
        def around(module: nn.Module, forward: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
            if _forward.get() is not None:  # a nested call (e.g. a second transformer inside): keep outer state
                return forward(*args, **kwargs)
            hidden = hidden_states_arg(args, kwargs)
            context_name = hook_ref[0].context_name
            labels = branch_labels(context_name, hidden.shape[0])
            step = self.clock.forward_step(context_name or "cond")
            timestep = kwargs.get("timestep")
            if isinstance(timestep, torch.Tensor) and timestep.numel() > 0:
                timestep = float(timestep.flatten()[0])
            elif not isinstance(timestep, (int, float)):
                timestep = None
            state = ForwardState(
                grid=self.adapter.video_grid(module, args, kwargs),
                labels=labels,
                generation=self.clock.generation,
                step=step,
                timestep=timestep,
            )
            token = _forward.set(state)
            try:
                return forward(*args, **kwargs)
            finally:
                _forward.reset(token)

        return around

    def _around_site(self, site: AttentionSite) -> Callable[..., Any]:
        def around(module: nn.Module, forward: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
            state = _forward.get()
            if state is None or (self.steps is not None and state.step not in self.steps):
                return forward(*args, **kwargs)
            offset = [0]

            def handler(original, q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa):
                call = SdpaCall(original, q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa)
                start = offset[0]
                offset[0] += q.shape[0] if q.ndim == 4 else 0
                return self._observe(site, state, start, call)

            with sdpa_handler(handler):
                return forward(*args, **kwargs)

        return around

    def _observe(self, site: AttentionSite, state: ForwardState, start: int, call: SdpaCall) -> torch.Tensor:
        """Run one SDPA call of an observed site and record its statistics (``start``: the call's first
        batch row within the forward, for the CFG labels)."""
        q, k, v = call.q, call.k, call.v
        if call.dropout_p > 0 or q.ndim != 4:
            self._note(f"{site.name}: SDPA call with dropout or non-4D inputs is not observed")
            return call.run()
        layout = self.adapter.layout(state.grid, k.shape[2]) if site.kind == "self" else None
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
        fused = self.fused and not needs_grad
        out = None if fused else call.run()
        with torch.no_grad():
            fused_out, stats = attention_stats(
                q.detach(),
                k.detach(),
                v.detach(),
                scale=call.scale,
                layout=layout,
                chunk_size=self.chunk_size,
                attn_mask=call.attn_mask,
                is_causal=call.is_causal,
                top_mass=self.top_mass,
                compute_output=fused,
                map_tiles=self._tiles_at(state.step) if layout is not None else None,
            )
        labels = call.labels(state, start)
        self.records.extend(records_from_stats(stats, site, state, labels, layout, keep_maps=self.keep_maps))
        return fused_out if fused else out

    def _tiles_at(self, step: int) -> int | None:
        """Token-map tiles for a call at this step: only when maps are kept and the step is chosen."""
        if not self.keep_maps or self.map_tiles is None:
            return None
        return self.map_tiles if self.map_steps is None or step in self.map_steps else None

    def _note(self, message: str) -> None:
        if message not in self.notes:
            self.notes.append(message)
            warnings.warn(message, stacklevel=3)


def transformers_of(model_or_pipeline: Any) -> tuple[list[nn.Module], Any]:
    """The denoising transformer(s) of a pipeline (Wan 2.2 has two) and its scheduler, or (model, None)."""
    if isinstance(model_or_pipeline, nn.Module):
        return [model_or_pipeline], None
    components = getattr(model_or_pipeline, "components", None)
    if isinstance(components, dict):
        models = [
            components[name] for name in ("transformer", "transformer_2") if isinstance(components.get(name), nn.Module)
        ]
        if models:
            return models, components.get("scheduler")
    raise TypeError(f"capture needs a diffusers video transformer or pipeline, got {type(model_or_pipeline).__name__}")


def checked_site_layers(layers: Iterable[int] | None, sites: list[AttentionSite]) -> set[int] | None:
    if layers is None:
        return None
    num_layers = len({site.layer for site in sites})
    chosen = {int(layer) for layer in layers}
    if not chosen:
        raise ValueError("the layer set is empty")
    bad = sorted(layer for layer in chosen if not 0 <= layer < num_layers)
    if bad:
        raise ValueError(f"layer {bad[0]} is out of range: the model has {num_layers} layers (0-{num_layers - 1})")
    return chosen


def self_attention_sites(
    model_or_pipeline: Any, layers: Iterable[int] | None
) -> tuple[list[nn.Module], Any, FamilyAdapter, list[AttentionSite]]:
    """(transformers, scheduler, adapter, the self-attention sites of the chosen layers) of a model or
    pipeline; a layer out of range raises ValueError."""
    models, scheduler = transformers_of(model_or_pipeline)
    adapter = adapter_for(models[0])
    chosen = checked_site_layers(layers, adapter.sites(models[0]))
    sites = [
        site
        for model in models
        for site in adapter.sites(model)
        if site.kind == "self" and (chosen is None or site.layer in chosen)
    ]
    return models, scheduler, adapter, sites


@contextmanager
def _native_attention(sites: list[AttentionSite], note: Callable[[str], None]) -> Iterator[None]:
    """Make the observed modules use diffusers' native backend (the only one that calls torch SDPA)."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry, attention_backend

    native = _native_backend_names()
    changed: list[tuple[Any, Any]] = []
    with ExitStack() as stack:
        active = _AttentionBackendRegistry._active_backend
        if getattr(active, "value", str(active)) not in native:
            note(
                f"attention backend {getattr(active, 'value', active)} does not call torch SDPA: "
                "capture uses the native backend while it is open"
            )
            stack.enter_context(attention_backend("native"))
        for site in sites:
            processor = getattr(site.module, "processor", None)
            backend = getattr(processor, "_attention_backend", None)
            if backend is not None and getattr(backend, "value", str(backend)) not in native:
                note(
                    f"{site.name}: attention backend {getattr(backend, 'value', backend)} does not call "
                    "torch SDPA: capture uses the native backend while it is open"
                )
                changed.append((processor, backend))
                processor._attention_backend = None
        try:
            yield
        finally:
            for processor, backend in changed:
                processor._attention_backend = backend


@contextmanager
def _scheduler_clock(scheduler: Any, clock: StepClock) -> Iterator[None]:
    """Count denoising steps and generations by wrapping the scheduler's set_timesteps and step."""
    if scheduler is None or not callable(getattr(scheduler, "step", None)):
        yield
        return
    own = {name: scheduler.__dict__[name] for name in ("step", "set_timesteps") if name in scheduler.__dict__}
    original_step = scheduler.step
    original_set = scheduler.set_timesteps

    def step(*args: Any, **kwargs: Any) -> Any:
        try:
            return original_step(*args, **kwargs)
        finally:
            clock.scheduler_step()

    def set_timesteps(*args: Any, **kwargs: Any) -> Any:
        clock.set_timesteps()
        return original_set(*args, **kwargs)

    scheduler.step = step
    scheduler.set_timesteps = set_timesteps
    clock.driven_by_scheduler = True
    try:
        yield
    finally:
        for name in ("step", "set_timesteps"):
            if name in own:
                setattr(scheduler, name, own[name])
            else:
                scheduler.__dict__.pop(name, None)


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
) -> Iterator[Capture]:
    """Record attention statistics of every observed attention call made inside the block.

    ``layers``/``steps``: video layer indices and denoising steps to observe (None = all); the
    others run through the model's own path untouched. By default the model receives the output
    of its own SDPA call (bit-identical to a run without capture) and the statistics come from a
    second, output-free pass; ``fused=True`` hands it the output of the statistics pass instead
    (one attention instead of two, equal to SDPA within float rounding). ``keep_maps`` keeps
    per-head frame maps, locality profiles and text masses on each record (small tensors);
    ``map_tiles`` T adds a T x T tile-pooled token map of the video tokens (``token_map``) at the
    ``map_steps`` (None = every observed step).
    """
    if map_tiles is not None and map_tiles < 1:
        raise ValueError(f"map_tiles must be positive, got {map_tiles}")
    models, scheduler = transformers_of(model_or_pipeline)
    adapter = adapter_for(models[0])
    all_sites = [site for model in models for site in adapter.sites(model)]
    chosen = checked_site_layers(layers, adapter.sites(models[0]))
    sites = [
        site
        for site in all_sites
        if (chosen is None or site.layer in chosen) and (cross_attention or site.kind == "self")
    ]
    session = Capture(
        models,
        adapter,
        sites,
        steps=None if steps is None else {int(s) for s in steps},
        top_mass=top_mass,
        fused=fused,
        chunk_size=chunk_size,
        keep_maps=keep_maps,
        map_tiles=map_tiles,
        map_steps=None if map_steps is None else {int(s) for s in map_steps},
    )
    with attached(session, models, scheduler):
        yield session


@contextmanager
def attached(session: Capture, models: list[nn.Module], scheduler: Any) -> Iterator[None]:
    """Attach a session's hooks (transformers and its sites), the scheduler clock and the SDPA
    routing; remove every trace on exit, also when the block raises. A session of the same kind
    already open on one of these modules raises VditscopeError before anything is attached."""
    _check_not_open(session, models)
    detachers: list[Callable[[], None]] = []
    with ExitStack() as stack:
        stack.enter_context(_native_attention(session.sites, session._note))
        stack.enter_context(_scheduler_clock(scheduler, session.clock))
        stack.enter_context(routed_sdpa())
        try:
            for model in models:
                ref: list[ContextAroundHook] = []
                hook = ContextAroundHook(session._around_transformer(ref))
                ref.append(hook)
                detachers.append(attach(model, hook, session.hook_name))
            for site in session.sites:
                detachers.append(attach(site.module, AroundHook(session._around_site(site)), session.hook_name))
            for model in models:
                invalidate_registry_cache(model)
            yield
        finally:
            for detach in reversed(detachers):
                detach()
            for model in models:
                invalidate_registry_cache(model)


def _check_not_open(session: Capture, models: list[nn.Module]) -> None:
    """One session of a kind per model at a time: each kind's hooks have one name per module
    (sessions of different kinds compose)."""
    for module in [*models, *(site.module for site in session.sites)]:
        registry = module.__dict__.get("_diffusers_hook")
        if registry is not None and session.hook_name in registry.hooks:
            name = session.session_name
            raise VditscopeError(
                f"{name} is already open on this model; close it first (one {name} per model at a time)"
            )
