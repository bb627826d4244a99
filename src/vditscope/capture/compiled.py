"""Hooks on compiled models: ``torch.compile(transformer)`` and diffusers' regional compilation
(``compile_repeated_blocks``, which compiles each transformer block in place).

The session unwraps a compiled wrapper to the modules it holds (``sites.uncompiled``) and runs the
observed attention calls outside the compiled graphs (``torch.compiler.disable`` on its hooks). A graph
compiled with ``fullgraph=True`` cannot break, so while a session is open the in-place compiled modules
that hold an observed site run eagerly (every other block stays compiled), and so does a whole-model
``torch.compile(..., fullgraph=True)`` wrapper.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

from ..adapters.base import TRANSFORMER_COMPONENTS


def compiled_in_place(module: nn.Module) -> bool:
    """Whether ``module.compile()`` (as ``compile_repeated_blocks`` calls it) compiled this module."""
    return getattr(module, "_compiled_call_impl", None) is not None


@contextmanager
def eager_around(models: Iterable[nn.Module], observed: Iterable[nn.Module]) -> Iterator[list[nn.Module]]:
    """For the block: the in-place compiled modules of ``models`` that contain an ``observed`` module run
    their eager forward; their compiled forward is restored on exit, also on errors. Yields them."""
    observed_ids = {id(module) for module in observed}
    switched: list[tuple[nn.Module, object]] = []
    try:
        for model in models:
            for module in model.modules():
                if compiled_in_place(module) and any(id(m) in observed_ids for m in module.modules()):
                    switched.append((module, module._compiled_call_impl))
                    module._compiled_call_impl = None
        yield [module for module, _ in switched]
    finally:
        for module, compiled in reversed(switched):
            module._compiled_call_impl = compiled


def full_graph_wrappers(model_or_pipeline: Any) -> list[nn.Module]:
    """The ``torch.compile(..., fullgraph=True)`` wrappers (OptimizedModule) among a model or a pipeline's
    transformers: their graph cannot break at an observed attention call."""
    components = getattr(model_or_pipeline, "components", None)
    if isinstance(components, dict):
        candidates = [components.get(name) for name in TRANSFORMER_COMPONENTS]
    else:
        candidates = [model_or_pipeline]
    return [
        module
        for module in candidates
        if isinstance(getattr(module, "_orig_mod", None), nn.Module)
        and getattr(getattr(module, "dynamo_ctx", None), "fullgraph", False)
    ]


@contextmanager
def eager_wrappers(wrappers: list[nn.Module]) -> Iterator[None]:
    """For the block: full-graph compiled wrappers call their module eagerly; their compiled forward is
    restored on exit, also on errors."""
    saved = [(wrapper, wrapper.__dict__["forward"]) for wrapper in wrappers if "forward" in wrapper.__dict__]
    try:
        for wrapper, _ in saved:
            wrapper.forward = wrapper._orig_mod.__call__
        yield
    finally:
        for wrapper, forward in saved:
            wrapper.forward = forward
