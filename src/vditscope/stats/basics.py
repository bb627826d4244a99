"""What every attention path shares: the checks of q, k, v as torch SDPA takes them, the mask in log2
units, the statistics dict, the chunk size, and the profiles derived from the frame and offset maps.

The chunked torch path (``streaming.py``), the Triton kernels (``triton_stats.py``), the sparse paths
and the dense reference all build on these, so they agree on every convention.
"""

from __future__ import annotations

import math
import operator
from functools import lru_cache
from typing import Any, Literal

import torch

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
# Finite stand-in for -inf in log2 units: exp2 of it is exactly 0 and 0 * MASKED is 0, not nan.
MASKED = -1.0e30
# Additive mask values at or below this (natural-log units) mean "masked", like -inf.
MASK_FLOOR = -1.0e4
# Score buffer budget per chunk (elements); chunk rows = budget / number of keys, within bounds.
CHUNK_ELEMENTS = 1 << 25
MIN_CHUNK, MAX_CHUNK = 64, 1024
CHUNK_ELEMENTS_GPU, MAX_CHUNK_GPU = 1 << 28, 8192

TopMassMode = Literal["auto", "exact", "estimate", "off"]


class AttentionStats(dict):
    """Statistics of one attention call (a dict of tensors whose keys also read as attributes).

    ``top_mass_method`` says how ``topk_mass`` was obtained: "exact", "estimate" or "off";
    ``backend`` which implementation computed them: "torch" or "triton".
    """

    top_mass_method: str = "off"
    backend: str = "torch"

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def default_chunk_size(num_keys: int, device: torch.device | str = "cpu") -> int:
    """Query rows per chunk: large enough for efficient matrix products (and, on a GPU, few kernel
    launches), small enough for memory: about 128 MiB per score buffer on CPU, 1 GiB on GPU."""
    if torch.device(device).type == "cpu":
        return int(min(MAX_CHUNK, max(MIN_CHUNK, CHUNK_ELEMENTS // max(num_keys, 1))))
    return int(min(MAX_CHUNK_GPU, max(MIN_CHUNK, CHUNK_ELEMENTS_GPU // max(num_keys, 1))))


@lru_cache(maxsize=4)
def offset_index(height: int, width: int) -> torch.Tensor:
    """Flat (dy, dx) offset id of every (query position, key position) pair of one frame."""
    ys = torch.arange(height).repeat_interleave(width)
    xs = torch.arange(width).repeat(height)
    dy = ys[None, :] - ys[:, None] + height - 1
    dx = xs[None, :] - xs[:, None] + width - 1
    return (dy * (2 * width - 1) + dx).flatten()


def check_attention_inputs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None
) -> None:
    """Raise ValueError, with one line naming what differs, unless q, k, v are as for torch SDPA:
    (B, Hq, Nq, D), (B, Hk, Nk, D), (B, Hk, Nk, Dv), one floating dtype, one device, Hq a multiple
    of Hk (grouped-query heads), D > 0; an ``attn_mask`` on the same device."""
    tensors = {"q": q, "k": k, "v": v}
    if any(t.ndim != 4 for t in tensors.values()):
        shapes = ", ".join(f"{name} {tuple(t.shape)}" for name, t in tensors.items())
        raise ValueError(f"q, k and v must be 4-D (B, H, N, D) as for torch SDPA; got {shapes}")
    if not all(t.is_floating_point() for t in tensors.values()):
        raise ValueError(f"q, k and v must be floating point, got {_describe(tensors, lambda t: t.dtype)}")
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"q, k and v must have the same dtype, got {_describe(tensors, lambda t: t.dtype)}")
    if not q.device == k.device == v.device:
        raise ValueError(f"q, k and v must be on the same device, got {_describe(tensors, lambda t: t.device)}")
    if attn_mask is not None and attn_mask.device != q.device:
        raise ValueError(f"attn_mask must be on the device of q, k and v ({q.device}), got {attn_mask.device}")
    if not q.shape[0] == k.shape[0] == v.shape[0]:
        raise ValueError(f"q, k and v must have the same batch size, got {_describe(tensors, lambda t: t.shape[0])}")
    if k.shape[1] != v.shape[1]:
        raise ValueError(f"k and v must have the same number of heads, got k {k.shape[1]}, v {v.shape[1]}")
    if k.shape[2] != v.shape[2]:
        raise ValueError(f"k and v must have the same length (keys), got k {k.shape[2]}, v {v.shape[2]}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must have the same head dimension, got q {q.shape[-1]}, k {k.shape[-1]}")
    if k.shape[1] == 0 or q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"query heads ({q.shape[1]}) must be a multiple of key heads ({k.shape[1]})")
    if q.shape[-1] == 0:
        raise ValueError("q and k have head dimension 0")


def _describe(tensors: dict[str, torch.Tensor], attribute: Any) -> str:
    """``torch.int64`` when the three agree, else ``q torch.float32, k torch.int64, v torch.float32``."""
    values = [attribute(t) for t in tensors.values()]
    if all(value == values[0] for value in values):
        return str(values[0])
    return ", ".join(f"{name} {value}" for name, value in zip(tensors, values, strict=True))


def checked_scale(scale: float | None, dim: int) -> float:
    """The softmax scale: 1/sqrt(D) when None, else ``scale`` if it is a finite positive number."""
    if scale is None:
        return 1.0 / math.sqrt(dim)
    try:
        value = float(scale)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"scale must be a positive finite number, got {scale!r}") from None
    if isinstance(scale, bool) or not (0.0 < value < math.inf):
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")
    return value


def masked_logits(logits: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
    """Logits (natural-log units) with an SDPA mask applied as SDPA applies it: a boolean mask hides the keys
    where it is False (-inf), any other mask is added."""
    if attn_mask is None:
        return logits
    if attn_mask.dtype == torch.bool:
        return logits.masked_fill(~attn_mask, float("-inf"))
    return logits + attn_mask.to(logits.dtype)


def checked_chunk_size(chunk_size: int | None) -> int | None:
    """``chunk_size`` if it is None or a positive integer; ValueError otherwise."""
    if chunk_size is None:
        return None
    try:
        rows = operator.index(chunk_size)
    except TypeError:
        rows = 0
    if isinstance(chunk_size, bool) or rows < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    return rows


def chunk_rows(chunk_size: int | None, default: int, num_q: int) -> int:
    """Query rows per chunk: ``chunk_size`` (checked) or ``default``, never more than the queries, so
    the chunk buffers are sized by what is computed (chunk_size=10**9 at 64 queries holds 64 rows)."""
    rows = checked_chunk_size(chunk_size) or default
    return max(1, min(rows, num_q))


def prepare_mask(attn_mask: torch.Tensor | None, batch: int, heads: int, num_q: int, num_k: int) -> torch.Tensor | None:
    """The mask as a (B, H, Nq, Nk) broadcast view: bool (True = attend) or additive in log2 units."""
    if attn_mask is None:
        return None
    if attn_mask.dtype != torch.bool:
        # additive values at or below MASK_FLOOR (natural-log units) hide the key: its weight is 0
        # in any float format, and it does not count as a visible key for the top-k fractions
        attn_mask = attn_mask.to(torch.float32) * LOG2E
        attn_mask = attn_mask.masked_fill(attn_mask <= MASK_FLOOR * LOG2E, MASKED)
    while attn_mask.ndim < 4:
        attn_mask = attn_mask.unsqueeze(0)
    try:
        return attn_mask.expand(batch, heads, num_q, num_k)
    except RuntimeError as exc:
        raise ValueError(
            f"attn_mask of shape {tuple(attn_mask.shape)} does not broadcast to {(batch, heads, num_q, num_k)}"
        ) from exc


def frame_distance_profile(frame_map: torch.Tensor) -> torch.Tensor:
    """Mean mass a video query puts on frames at distance |dt| = 0..F-1: (..., F)."""
    frames = frame_map.shape[-1]
    idx = torch.arange(frames, device=frame_map.device)
    distance = (idx[:, None] - idx[None, :]).abs().flatten()
    flat = frame_map.flatten(-2)
    profile = torch.zeros(*frame_map.shape[:-2], frames, dtype=frame_map.dtype, device=frame_map.device)
    profile.index_add_(-1, distance, flat)
    return profile / frames


def ring_profile(offsets: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Same-frame mass by Chebyshev distance ring r = max(|dy|, |dx|) = 0..max(H, W)-1: (..., R)."""
    dy = (torch.arange(2 * height - 1, device=offsets.device) - (height - 1)).abs()
    dx = (torch.arange(2 * width - 1, device=offsets.device) - (width - 1)).abs()
    ring = torch.maximum(dy[:, None], dx[None, :]).flatten()
    profile = torch.zeros(*offsets.shape[:-2], max(height, width), dtype=offsets.dtype, device=offsets.device)
    profile.index_add_(-1, ring, offsets.flatten(-2))
    return profile
