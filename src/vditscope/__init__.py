"""vditscope: see and change what attention does inside video diffusion transformers.

The public names load on first use (PEP 562), so that ``import vditscope.cli`` (``vditscope --help``, a
refused command) does not pay for torch and diffusers.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from .version import __version__

_PUBLIC = {  # name -> the module that defines it
    "TOP_FRACTIONS": ".stats",
    "AttentionEdit": ".capture.intervene",
    "AttentionStats": ".stats",
    "Capture": ".capture",
    "KeyStats": ".stats.key_stats",
    "PixelShuffleVAE": ".models.pixel_vae",
    "Run": ".store",
    "TokenLayout": ".layout",
    "UnsupportedModelError": ".adapters",
    "ablate_sinks": ".capture.sink_ablation",
    "attention_stats": ".stats",
    "capture": ".capture",
    "intervene": ".capture.intervene",
    "key_stats": ".stats.key_stats",
    "load_run": ".store",
    "open_run": ".store",
    "sink_capture": ".capture.sink_capture",
    "supported_families": ".adapters",
    "tiny_model_dir": ".tiny",
}
__all__ = [
    "TOP_FRACTIONS",
    "AttentionEdit",
    "AttentionStats",
    "Capture",
    "KeyStats",
    "PixelShuffleVAE",
    "Run",
    "TokenLayout",
    "UnsupportedModelError",
    "__version__",
    "ablate_sinks",
    "attention_stats",
    "capture",
    "intervene",
    "key_stats",
    "load_run",
    "open_run",
    "sink_capture",
    "supported_families",
    "tiny_model_dir",
]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name], __name__), "open_run" if name == "load_run" else name)
    if name != "capture":
        globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(types.ModuleType):
    """``vditscope.capture`` is the function, as documented, even after the ``vditscope.capture`` package
    is imported (importing a subpackage sets the parent's attribute of that name; this one is kept)."""

    @property
    def capture(self) -> Any:
        return importlib.import_module(".capture", __name__).capture

    @capture.setter
    def capture(self, value: Any) -> None:  # the import system's setattr for the subpackage: ignored
        pass


sys.modules[__name__].__class__ = _Package

if TYPE_CHECKING:
    from .adapters import UnsupportedModelError, supported_families
    from .capture import Capture, capture
    from .capture.intervene import AttentionEdit, intervene
    from .capture.sink_ablation import ablate_sinks
    from .capture.sink_capture import sink_capture
    from .layout import TokenLayout
    from .models.pixel_vae import PixelShuffleVAE
    from .stats import TOP_FRACTIONS, AttentionStats, attention_stats
    from .stats.key_stats import KeyStats, key_stats
    from .store import Run, open_run
    from .store import open_run as load_run
    from .tiny import tiny_model_dir
