"""The one interception point: torch's scaled_dot_product_attention, routed while a handler is active.

All five families reach torch SDPA with final (normalized, rotated, concatenated) q and k in
(B, H, S, D) layout, directly or through diffusers' native attention backend. The patch is
installed only while a capture is open (reference-counted) and is a plain pass-through for any
call made outside an observed attention module.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
import torch.nn.functional as F

SdpaFn = Callable[..., torch.Tensor]
# handler(original_sdpa, q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa) -> output
SdpaHandler = Callable[..., torch.Tensor]

_handler: ContextVar[SdpaHandler | None] = ContextVar("vditscope_sdpa_handler", default=None)
_lock = threading.Lock()
_installed = 0
_original: SdpaFn | None = None


def _routed_sdpa(*args: Any, **kwargs: Any) -> torch.Tensor:
    handler = _handler.get()
    if handler is None:
        return _original(*args, **kwargs)
    return handler(_original, *_normalize(*args, **kwargs))


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


@contextmanager
def routed_sdpa() -> Iterator[None]:
    """Install the routing SDPA for the duration of the block (nested uses share one install)."""
    global _installed, _original
    with _lock:
        if _installed == 0:
            _original = F.scaled_dot_product_attention
            F.scaled_dot_product_attention = _routed_sdpa
        _installed += 1
    try:
        yield
    finally:
        with _lock:
            _installed -= 1
            if _installed == 0:
                F.scaled_dot_product_attention = _original
                _original = None


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
