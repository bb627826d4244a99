"""Keep observed attention on diffusers' native backend, the only one that calls torch SDPA."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from diffusers.models import attention_dispatch
from diffusers.models.attention_dispatch import AttentionBackendName, attention_backend

from ..adapters import AttentionSite


def _native_backend_names() -> set[str]:
    return {name.value for name in AttentionBackendName if name.value.lstrip("_").startswith("native")}


def _active_backend() -> Any:
    """diffusers' globally active attention backend (its registry has no public getter)."""
    return attention_dispatch._AttentionBackendRegistry._active_backend


def _name(backend: Any) -> str:
    return getattr(backend, "value", str(backend))


@contextmanager
def native_attention(sites: list[AttentionSite], note: Callable[[str], None]) -> Iterator[None]:
    """Make the observed modules use diffusers' native backend while the block runs; restore after."""
    native = _native_backend_names()
    changed: list[tuple[Any, Any]] = []
    with ExitStack() as stack:
        active = _active_backend()
        if _name(active) not in native:
            note(
                f"attention backend {_name(active)} does not call torch SDPA: "
                "capture uses the native backend while it is open"
            )
            stack.enter_context(attention_backend("native"))
        for site in sites:
            processor = getattr(site.module, "processor", None)
            backend = getattr(processor, "_attention_backend", None)
            if backend is not None and _name(backend) not in native:
                note(
                    f"{site.name}: attention backend {_name(backend)} does not call "
                    "torch SDPA: capture uses the native backend while it is open"
                )
                changed.append((processor, backend))
                processor._attention_backend = None
        try:
            yield
        finally:
            for processor, backend in changed:
                processor._attention_backend = backend
