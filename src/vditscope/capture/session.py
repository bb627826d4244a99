"""`HookSession`: the mechanics every hook technique shares, and `observing`, the one way to apply one.

A session resolves the transformer(s) and attention sites of a model or pipeline, picks the sites
its ``Selection`` names, and while attached: hooks each transformer (which forward: step, CFG
branch, video grid) and each site (routes that module's torch SDPA calls to the observer), counts
steps on the scheduler, keeps observed modules on the native attention backend, and removes every
trace on exit, also when the block raises. A technique is a frozen config (with a ``Selection``
named ``where``), an observer with one method ``observe(call) -> Tensor`` and a ``Technique``
whose ``apply(model, config)`` opens it (the shape of diffusers' ``apply_pyramid_attention_broadcast``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import torch
from torch import nn

from ..adapters import AttentionSite, FamilyAdapter, adapter_for
from ..adapters.base import hidden_states_arg
from ..errors import VditscopeError
from .backend import native_attention
from .calls import ObservedCall, SdpaCall
from .clock import StepClock, scheduler_clock
from .compiled import eager_around, eager_wrappers, full_graph_wrappers
from .context_parallel import HeadShards, head_shards
from .hooks import AroundHook, ContextAroundHook, attach, invalidate_registry_cache
from .sdpa_patch import open_routing, scoped_routing, sdpa_handler
from .selection import Selection, checked_site_layers, layer_count
from .sites import named_transformers, self_attention_sites, transformer_sites, transformers_of
from .state import ForwardState, branch_labels

__all__ = [
    "ForwardState",
    "HookSession",
    "ObservedCall",
    "Observer",
    "SdpaCall",
    "SessionObserver",
    "StepClock",
    "Technique",
    "branch_labels",
    "checked_site_layers",
    "observing",
    "self_attention_sites",
    "transformers_of",
]

# the forward being run; shared by all sessions, so a nested session sees the outer one's forward
_forward: ContextVar[ForwardState | None] = ContextVar("vditscope_forward", default=None)


class Observer(Protocol):
    """What a technique does with each observed SDPA call: return the output the model receives."""

    def observe(self, call: ObservedCall) -> torch.Tensor: ...


ObserverT = TypeVar("ObserverT", bound=Observer)


class HookSession:
    """The hooks of one technique on one model: ``name`` is the function that opens it (for
    messages), ``hook`` the hook name (one per module and technique, so kinds compose)."""

    def __init__(self, model_or_pipeline: Any, where: Selection, *, name: str, hook: str | None = None) -> None:
        named, self.scheduler = named_transformers(model_or_pipeline)
        self.models = [model for _, model in named]
        self.wrappers = full_graph_wrappers(model_or_pipeline)
        self.adapter: FamilyAdapter = adapter_for(self.models[0])
        self.model_layers = layer_count(self.adapter.sites(self.models[0]))
        where.check_layers(self.model_layers)
        self.where = where
        self.sites: list[AttentionSite] = [
            site for site in transformer_sites(self.adapter, named) if where.takes_site(site)
        ]
        self.name = name
        self.hook = hook or f"vditscope_{name}"
        self.clock = StepClock()
        self.notes: list[str] = []
        # under Ulysses context parallelism: this rank's share of the heads (None without)
        self.shards: HeadShards | None = head_shards(self.models)

    @property
    def family(self) -> str:
        return self.adapter.family

    def check_layers(self, layers: frozenset[int] | None) -> None:
        """ValueError when a layer set names a layer the model lacks."""
        Selection(layers=layers).check_layers(self.model_layers)

    def note(self, message: str) -> None:
        """Keep a message once and warn with it (what the session left as the model made it)."""
        if message not in self.notes:
            self.notes.append(message)
            warnings.warn(message, stacklevel=3)

    @contextmanager
    def attached(self, observer: Observer) -> Iterator[None]:
        """Attach the hooks, the scheduler clock and the SDPA routing for the block; remove every trace
        on exit, also when it raises. The same technique already open on one of these modules raises
        VditscopeError before anything is attached."""
        self._check_not_open()
        detachers: list[Callable[[], None]] = []
        with ExitStack() as stack:
            stack.enter_context(native_attention(self.sites, self.note))
            stack.enter_context(eager_around(self.models, [site.module for site in self.sites]))
            stack.enter_context(eager_wrappers(self.wrappers))
            stack.enter_context(scheduler_clock(self.scheduler, self.clock))
            stack.enter_context(open_routing())
            try:
                for model in self.models:
                    # not traced by torch.compile (it reads the timestep as a number); what it calls still is
                    hook = ContextAroundHook(torch.compiler.disable(self._around_transformer, recursive=False))
                    detachers.append(attach(model, hook, self.hook))
                for site in self.sites:
                    detachers.append(attach(site.module, AroundHook(self._around_site(site, observer)), self.hook))
                for model in self.models:
                    invalidate_registry_cache(model)
                yield
            finally:
                for detach in reversed(detachers):
                    detach()
                for model in self.models:
                    invalidate_registry_cache(model)

    def _check_not_open(self) -> None:
        for module in [*self.models, *(site.module for site in self.sites)]:
            registry = module.__dict__.get("_diffusers_hook")
            if registry is not None and self.hook in registry.hooks:
                raise VditscopeError(
                    f"{self.name} is already open on this model; close it first (one {self.name} per model at a time)"
                )

    def _around_transformer(
        self, context_name: str | None, module: nn.Module, forward: Callable[..., Any], args: tuple, kwargs: dict
    ) -> Any:
        """Run one transformer forward with its ForwardState set (a nested forward keeps the outer one's)."""
        if _forward.get() is not None:
            return forward(*args, **kwargs)
        timestep = kwargs.get("timestep")
        if isinstance(timestep, torch.Tensor) and timestep.numel() > 0:
            timestep = float(timestep.flatten()[0])
        elif not isinstance(timestep, (int, float)):
            timestep = None
        state = ForwardState(
            grid=self.adapter.video_grid(module, args, kwargs),
            labels=branch_labels(context_name, hidden_states_arg(args, kwargs).shape[0]),
            generation=self.clock.generation,
            step=self.clock.forward_step(context_name or "cond"),
            timestep=timestep,
        )
        token = _forward.set(state)
        try:
            return forward(*args, **kwargs)
        finally:
            _forward.reset(token)

    def _around_site(self, site: AttentionSite, observer: Observer) -> Callable[..., Any]:
        """Route the SDPA calls of one site's forward to the observer (selected steps and call kinds only)."""

        def around(module: nn.Module, forward: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
            state = _forward.get()
            if state is None or not self.where.takes_step(state.step):
                return forward(*args, **kwargs)
            calls = [0]
            offsets: dict[str, int] = {}  # batch rows seen so far, per call kind

            def handler(original: Callable[..., torch.Tensor], *sdpa_args: Any) -> torch.Tensor:
                sdpa = SdpaCall(original, *sdpa_args)
                call_site = site.for_call(calls[0])
                calls[0] += 1
                if not self.where.takes_kind(call_site.kind):
                    return sdpa.run()
                start = offsets.get(call_site.kind, 0)
                offsets[call_site.kind] = start + (sdpa.q.shape[0] if sdpa.q.ndim == 4 else 0)
                return observer.observe(ObservedCall(call_site, state, start, sdpa))

            with sdpa_handler(handler), scoped_routing():
                return forward(*args, **kwargs)

        # under torch.compile, an observed attention module runs eagerly (one graph break on each side):
        # the observers keep Python state, and the rest of the model stays compiled
        return torch.compiler.disable(around)


class SessionObserver:
    """Base of the techniques' observers (the objects their apply functions yield): the session's
    facts under the names ``capture`` has always shown."""

    def __init__(self, session: HookSession) -> None:
        self.session = session

    def observe(self, call: ObservedCall) -> torch.Tensor:
        return call.run()

    @property
    def models(self) -> list[nn.Module]:
        return self.session.models

    @property
    def adapter(self) -> FamilyAdapter:
        return self.session.adapter

    @property
    def sites(self) -> list[AttentionSite]:
        return self.session.sites

    @property
    def notes(self) -> list[str]:
        return self.session.notes

    @property
    def family(self) -> str:
        return self.session.family

    @property
    def num_layers(self) -> int:
        """Video layers among the observed sites."""
        return layer_count(self.session.sites)


@contextmanager
def observing(
    model_or_pipeline: Any,
    where: Selection,
    make_observer: Callable[[HookSession], ObserverT],
    *,
    name: str,
    hook: str | None = None,
) -> Iterator[ObserverT]:
    """Hook ``make_observer(session)`` into the sites of ``model_or_pipeline`` that ``where`` selects for
    the block; yields the observer. ``name``: the technique's opener, for messages."""
    session = HookSession(model_or_pipeline, where, name=name, hook=hook)
    observer = make_observer(session)
    with session.attached(observer):
        yield observer
    finish = getattr(observer, "finish", None)
    if finish is not None:  # after a block that did not raise: gather what the ranks of a parallel run hold
        finish()


@dataclass(frozen=True)
class Technique(Generic[ObserverT]):
    """A hook technique: the name of the function that opens it (messages), its observer, built as
    ``observer(session, config)``, and its hook name (default ``vditscope_<name>``)."""

    name: str
    observer: Callable[[HookSession, Any], ObserverT]
    hook: str | None = None

    def apply(self, model_or_pipeline: Any, config: Any) -> AbstractContextManager[ObserverT]:
        """Observe the calls ``config.where`` selects with a fresh observer of ``config`` in the block."""
        return observing(
            model_or_pipeline,
            config.where,
            lambda session: self.observer(session, config),
            name=self.name,
            hook=self.hook,
        )
