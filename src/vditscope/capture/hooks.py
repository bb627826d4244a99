"""Attach diffusers ModelHooks around modules and remove every trace again."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import StateManager
from torch import nn

# around(module, original_forward, args, kwargs) -> output
Around = Callable[[nn.Module, Callable[..., Any], tuple[Any, ...], dict[str, Any]], Any]
# context_around(cache_context_name, module, original_forward, args, kwargs) -> output
ContextAround = Callable[[str | None, nn.Module, Callable[..., Any], tuple[Any, ...], dict[str, Any]], Any]


class AroundHook(ModelHook):
    """A hook that runs the wrapped forward inside ``around`` (so try/finally scopes hold)."""

    def __init__(self, around: Around) -> None:
        super().__init__()
        self._around = around

    def new_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
        return self._around(module, self.fn_ref.original_forward, args, kwargs)


class _NoState:
    def reset(self) -> None:
        pass


class ContextAroundHook(ModelHook):
    """A hook whose ``around`` also receives the pipeline's ``cache_context`` name (cond / uncond /
    cond_uncond), which diffusers hands only to stateful hooks."""

    _is_stateful = True

    def __init__(self, around: ContextAround) -> None:
        super().__init__()
        self._around = around
        self.state = StateManager(_NoState)

    def new_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
        return self._around(self.context_name, module, self.fn_ref.original_forward, args, kwargs)

    @property
    def context_name(self) -> str | None:
        context = self.state._context
        return None if context is None else context.name

    def reset_state(self, module: nn.Module) -> nn.Module:
        return module


def attach(module: nn.Module, hook: ModelHook, name: str) -> Callable[[], None]:
    """Register ``hook`` on ``module``; the returned function removes it and anything it created."""
    had_registry = "_diffusers_hook" in module.__dict__
    had_forward = "forward" in module.__dict__
    registry = HookRegistry.check_if_exists_or_initialize(module)
    registry.register_hook(hook, name)

    def detach() -> None:
        registry.remove_hook(name, recurse=False)
        if not had_forward:
            module.__dict__.pop("forward", None)
        if not had_registry and not registry.hooks:
            module.__dict__.pop("_diffusers_hook", None)

    return detach


def invalidate_registry_cache(root: nn.Module) -> None:
    """Tell the root's hook registry (if any) that the set of hooked submodules changed."""
    registry = root.__dict__.get("_diffusers_hook")
    if registry is not None:
        registry.invalidate_child_registries_cache()
