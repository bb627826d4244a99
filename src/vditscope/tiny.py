"""The default model: a tiny Wan text-to-video pipeline directory that works offline.

Until the trained tiny model ships, it is a random-weight Wan pipeline built in code on first
use and kept in the cache directory ($VDITSCOPE_CACHE, default ~/.cache/vditscope).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

TINY_WAN_NAME = "tiny-wan-random-v1"


def cache_dir() -> Path:
    """Where vditscope keeps models it builds itself."""
    return Path(os.environ.get("VDITSCOPE_CACHE", Path.home() / ".cache" / "vditscope"))


def tiny_model_dir() -> Path:
    """Directory of the default tiny Wan pipeline (diffusers format, with vditscope.json)."""
    target = cache_dir() / TINY_WAN_NAME
    if (target / "vditscope.json").is_file() and (target / "model_index.json").is_file():
        return target
    from .tiny_wan import save_tiny_wan

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{TINY_WAN_NAME}-", dir=target.parent))
    try:
        save_tiny_wan(staging)
        try:
            staging.rename(target)
        except OSError:  # another process finished first
            if not (target / "vditscope.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def is_random_default(model_dir: Path) -> bool:
    """True when ``model_dir`` is the random-weight stand-in built by this module."""
    return Path(model_dir).name == TINY_WAN_NAME
