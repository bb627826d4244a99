"""The one interception point: torch's scaled_dot_product_attention, routed to the active handler.

All five families reach torch SDPA with final (normalized, rotated, concatenated) q and k in
(B, H, S, D) layout, directly or through diffusers' native attention backend. Two ways to catch
those calls (``INTERCEPTIONS``; benchmarks/bench_sdpa_interception.py measures both):

- ``"rebind"`` (the default): ``F.scaled_dot_product_attention`` is rebound process-wide while any
  session is open (reference-counted), a plain pass-through outside observed modules.
- ``"mode"``: a ``torch.overrides.TorchFunctionMode`` pushed only while an observed attention
  module runs its forward (as diffusers' ``hooks/layer_skip.py`` does); nothing global changes.
  Same outputs and records, but every torch function inside an observed module passes through
  Python (about 1 us each, some 60 per attention forward): 1.5-5% slower than "rebind" on the
  shipped tiny model (benchmarks/results/cpu-2core-sdpa-interception.txt), so it is not the default.

Either way a call goes to the handler set with ``sdpa_handler`` (a ContextVar); handlers chain, so
a capture and an intervention open on one model compose.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

SdpaFn = Callable[..., torch.Tensor]
# handler(original_sdpa, q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa) -> output
SdpaHandler = Callable[..., torch.Tensor]

INTERCEPTIONS = ("mode", "rebind")
TORCH_SDPA: SdpaFn = torch._C._nn.scaled_dot_product_attention  # what F.scaled_dot_product_attention is

_handler: ContextVar[SdpaHandler | None] = ContextVar("vditscope_sdpa_handler", default=None)
_mode_on: ContextVar[bool] = ContextVar("vditscope_sdpa_mode_on", default=False)
_lock = threading.Lock()
_installed = 0  # open routings (sessions and routed_sdpa blocks)
_interception = "rebind"
_original: SdpaFn | None = None  # the rebound function while "rebind" routing is installed


def _normalize(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> tuple[Any, ...]:
    return query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa


def _routed_sdpa(*args: Any, **kwargs: Any) -> torch.Tensor:
    """The rebound F.scaled_dot_product_attention ("rebind"). Traced by torch.compile it is a plain
    pass-through: observed attention modules run outside compiled graphs, so a traced call is unobserved."""
    if torch.compiler.is_compiling():
        return _original(*args, **kwargs)
    handler = _handler.get()
    if handler is None:
        return _original(*args, **kwargs)
    return handler(_original, *_normalize(*args, **kwargs))


class RoutingMode(TorchFunctionMode):
    """Hands torch SDPA calls to the active handler ("mode"); every other function runs as called.

    While torch runs ``__torch_function__`` the mode is off its stack, so the handler's own torch
    calls (the statistics, the SDPA it is given) pass straight through."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        handler = _handler.get() if func is TORCH_SDPA else None
        if handler is None:
            return func(*args, **kwargs)
        token = _mode_on.set(False)  # a module run by the handler may push the mode again
        try:
            return handler(func, *_normalize(*args, **kwargs))
        finally:
            _mode_on.reset(token)


@contextmanager
def open_routing() -> Iterator[None]:
    """Hold SDPA routing open for a session ("rebind": install the rebound function; nested uses
    share one install). Calls are routed where ``scoped_routing`` runs."""
    global _installed, _original
    with _lock:
        if _installed == 0 and _interception == "rebind":
            _original = F.scaled_dot_product_attention
            F.scaled_dot_product_attention = _routed_sdpa
        _installed += 1
    try:
        yield
    finally:
        with _lock:
            _installed -= 1
            if _installed == 0 and _original is not None:
                F.scaled_dot_product_attention = _original
                _original = None


@contextmanager
def scoped_routing() -> Iterator[None]:
    """Route the SDPA calls made inside the block, e.g. one observed module's forward ("mode":
    push the routing mode unless this context already runs under it)."""
    if _interception != "mode" or _mode_on.get():
        yield
        return
    token = _mode_on.set(True)
    try:
        with RoutingMode():
            yield
    finally:
        _mode_on.reset(token)


@contextmanager
def routed_sdpa() -> Iterator[None]:
    """Route every SDPA call made inside the block (in this thread) to the active handler."""
    with open_routing(), scoped_routing():
        yield


@contextmanager
def interception(kind: str) -> Iterator[None]:
    """Intercept with ``kind`` ("mode" or "rebind") in the block; for benchmarks and tests. No
    routing may be open when it starts."""
    global _interception
    if kind not in INTERCEPTIONS:
        raise ValueError(f"unknown SDPA interception {kind!r}; choose {' or '.join(INTERCEPTIONS)}")
    with _lock:
        if _installed:
            raise RuntimeError("the SDPA interception cannot change while a session is open")
        previous, _interception = _interception, kind
    try:
        yield
    finally:
        _interception = previous


@contextmanager
def sdpa_handler(handler: SdpaHandler) -> Iterator[None]:
    """Route the SDPA calls made inside the block (in this thread/context) to ``handler``.

    Handlers nest: inside another handler's block, the ``original`` a handler receives runs the
    outer handler (which gets the real SDPA), so a capture and an intervention compose."""
    outer = _handler.get()
    if outer is not None:
        inner = handler

        def chained(original: SdpaFn, *args: Any) -> torch.Tensor:
            def through_outer(*call: Any, **kwargs: Any) -> torch.Tensor:
                return outer(original, *_normalize(*call, **kwargs))

            return inner(through_outer, *args)

        handler = chained
    token = _handler.set(handler)
    try:
        yield
    finally:
        _handler.reset(token)
