"""Writers of a run directory's files: JSON, parquet tables, safetensors, the library versions
(where a run directory may go, and how it lands there, is ``output.py``)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..version import __version__

if TYPE_CHECKING:  # torch loads when a tensor is written, so that importing store (the CLI) stays light
    import torch


def library_versions() -> dict[str, str]:
    """The versions a run directory records (vditscope, torch, diffusers, transformers, Python)."""
    import platform

    import diffusers
    import torch
    import transformers

    return {
        "vditscope": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def write_table(path: Path, table: Any) -> None:
    """A pandas DataFrame as parquet (pyarrow)."""
    table.to_parquet(path, index=False)


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Tensors as safetensors (contiguous CPU copies)."""
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)


def json_safe(value: Any) -> Any:
    """A copy for strict JSON: non-finite floats (e.g. PSNR of identical videos) become null."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
