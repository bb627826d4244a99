"""Attach diffusers ModelHooks around modules and remove every trace again."""

from __future__ import annotations

import functools
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
    """Register ``hook`` on ``module``; the returned function removes it and anything it created.

    Under an accelerate hook (``enable_model_cpu_offload``, ``enable_sequential_cpu_offload``) the hook goes
    inside it, where accelerate keeps the wrapped forward (``_old_forward``): model CPU offload removes and
    re-adds its hooks after every pipeline call, which would drop a hook wrapped around its own."""
    had_registry = "_diffusers_hook" in module.__dict__
    had_forward = "forward" in module.__dict__
    registry = HookRegistry.check_if_exists_or_initialize(module)
    inside = _accelerate_outermost(module)
    if inside:
        outer = module.__dict__["forward"]
        module.forward = module.__dict__["_old_forward"]
    registry.register_hook(hook, name)
    ours = module.__dict__["forward"]
    if inside:
        module._old_forward = ours
        module.forward = outer

    def detach() -> None:
        if module.__dict__.get("_old_forward") is ours:  # still (or again) inside accelerate's hook
            outer_now = module.__dict__["forward"]
            module.forward = ours
            registry.remove_hook(name, recurse=False)
            module._old_forward = module.__dict__["forward"]
            module.forward = outer_now
        else:
            registry.remove_hook(name, recurse=False)
        if not had_forward and _is_own_forward(module, module.__dict__.get("forward")):
            module.__dict__.pop("forward")  # the class's forward again (not one another hook set meanwhile)
        if not had_registry and not registry.hooks:
            module.__dict__.pop("_diffusers_hook", None)

    return detach


def _accelerate_outermost(module: nn.Module) -> bool:
    """Whether the module's forward is accelerate's hook wrapper (``add_hook_to_module``), which calls
    ``module._old_forward``, and not a diffusers hook registered over it."""
    forward = module.__dict__.get("forward")
    return (
        "_hf_hook" in module.__dict__
        and "_old_forward" in module.__dict__
        and isinstance(forward, functools.partial)
        and getattr(forward.func, "__module__", None) == "accelerate.hooks"
    )


def _is_own_forward(module: nn.Module, forward: Any) -> bool:
    """Whether ``forward`` is the module's own class forward, bound to it."""
    return getattr(forward, "__self__", None) is module and getattr(forward, "__func__", None) is type(module).forward


def invalidate_registry_cache(root: nn.Module) -> None:
    """Tell the root's hook registry (if any) that the set of hooked submodules changed."""
    registry = root.__dict__.get("_diffusers_hook")
    if registry is not None:
        registry.invalidate_child_registries_cache()
