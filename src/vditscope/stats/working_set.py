"""Memory of the statistics of one attention call, as ``streaming.py`` and ``triton_stats.py`` allocate it,
and the chunk size that keeps it within a budget.

The chunked torch path holds, per worker thread, two float32 buffers of ``chunk x keys`` (scores and
unnormalized probabilities) and, while it measures the top-k mass of a chunk's rows, their normalized
weights plus ``torch.topk``'s values and int64 indices for half the keys; per head it holds the float32
keys (transposed), the scaled queries and the same-frame offset sums, each briefly twice while the next
head's replace them. The statistics it returns (entropy, received mass, maps) stay. ``tests/analyses/
test_memory_plan.py`` measures the peak of real calls with torch's profiler and holds it to this count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..layout import TokenLayout
from .basics import MIN_CHUNK, default_chunk_size
from .streaming import THREADED_MIN_SCORES
from .top_mass import EXACT_QUERY_LIMIT, MIN_SAMPLED_ROWS, SAMPLE_STRIDE, TOP_FRACTIONS

FLOAT32 = 4
INDEX = 8  # torch.topk's indices and the offset index are int64


@dataclass(frozen=True)
class CallShape:
    """The sizes of one attention call that decide what its statistics allocate (q, k, v as torch SDPA
    takes them: (batch, heads, num_q, head_dim); ``kv_heads`` None = ``heads``)."""

    batch: int
    heads: int
    num_q: int
    num_k: int
    head_dim: int
    kv_heads: int | None = None
    value_dim: int | None = None
    layout: TokenLayout | None = None
    map_tiles: int | None = None
    spatial: bool = True
    masked: bool = False  # an attention mask, or a causal call
    itemsize: int = FLOAT32  # bytes per element of q, k and v

    @property
    def key_heads(self) -> int:
        return self.kv_heads or self.heads

    @property
    def values(self) -> int:
        return self.value_dim or self.head_dim


def workers_for(shape: CallShape, device: str = "cpu", threads: int = 1) -> int:
    """Worker threads the torch path runs (``streaming.run_over_heads``): one per (batch, key head) pair up
    to ``threads`` on CPU for large calls, one on a GPU."""
    pairs = shape.batch * shape.key_heads
    if device.split(":")[0] != "cpu" or shape.num_q * shape.num_k * pairs < THREADED_MIN_SCORES:
        return 1
    return max(1, min(pairs, threads))


def output_bytes(shape: CallShape, compute_output: bool = False) -> int:
    """The statistics a call returns (they outlive it): per-query and per-key sums, maps, and the output."""
    per_head = shape.num_q + shape.num_k + len(TOP_FRACTIONS)
    layout = shape.layout
    if layout is not None:
        per_head += layout.frames * (layout.frames + 1) + 2 + layout.num_text
        if shape.map_tiles is not None:
            per_head += layout.tiles(shape.map_tiles)[1] ** 2
        if shape.spatial:
            per_head += (2 * layout.height - 1) * (2 * layout.width - 1) + max(layout.height, layout.width)
    total = shape.batch * shape.heads * per_head * FLOAT32
    if compute_output:
        total += shape.batch * shape.heads * shape.num_q * shape.values * shape.itemsize
    return total


def head_bytes(shape: CallShape, compute_output: bool = False) -> int:
    """What one worker holds per head: float32 keys (transposed), scaled queries, values when the output is
    computed and the same-frame offset sums, each twice while the next head's are made; plus the int64
    offset index of one frame (cached) and what builds it."""
    keys = shape.num_k * shape.head_dim * FLOAT32 * (2 if shape.itemsize != FLOAT32 else 1)
    queries = shape.num_q * shape.head_dim * FLOAT32
    values = shape.num_k * shape.values * FLOAT32 if compute_output and shape.itemsize != FLOAT32 else 0
    frame = shape.layout.tokens_per_frame**2 if shape.layout is not None and shape.spatial else 0
    return 2 * (keys + queries + values + frame * FLOAT32) + 4 * frame * INDEX


def top_rows(shape: CallShape, rows: int, top_mass: str) -> int:
    """Rows of a ``rows``-row chunk whose top-k mass is measured exactly: all of them ("exact", or "auto" up
    to EXACT_QUERY_LIMIT queries), none ("off"), else the sampled ones: twice a chunk's mean share of the
    ``max(MIN_SAMPLED_ROWS, num_q / SAMPLE_STRIDE)`` sampled rows (the draw is uneven over chunks)."""
    if top_mass == "off":
        return 0
    if top_mass == "exact" or (top_mass == "auto" and shape.num_q <= EXACT_QUERY_LIMIT):
        return rows
    sampled = min(shape.num_q, max(MIN_SAMPLED_ROWS, math.ceil(shape.num_q / SAMPLE_STRIDE)))
    return min(rows, sampled, math.ceil(2 * rows * sampled / shape.num_q))


def chunk_bytes(shape: CallShape, rows: int, top_mass: str = "auto", compute_output: bool = False) -> int:
    """What one worker holds for a chunk of ``rows`` query rows: the scores and probability buffers, the
    output rows, a boolean mask row block when masked, and, for the rows whose top-k mass is measured,
    their normalized weights with torch.topk's values and int64 indices of half the keys."""
    num_k = shape.num_k
    buffers = 2 * rows * num_k * FLOAT32 + (rows * shape.values * FLOAT32 if compute_output else 0)
    masked = rows * num_k if shape.masked else 0
    top = top_rows(shape, rows, top_mass)
    half = math.ceil(num_k * max(TOP_FRACTIONS))
    selection = top * (num_k * FLOAT32 + half * (FLOAT32 + INDEX))
    layout = shape.layout
    small = rows * (3 * layout.frames + (shape.map_tiles or 0)) * FLOAT32 if layout is not None else 0
    return buffers + masked + selection + small


def statistics_bytes(
    shape: CallShape,
    chunk: int | None = None,
    *,
    device: str = "cpu",
    threads: int = 1,
    top_mass: str = "auto",
    compute_output: bool = False,
    backend: str = "torch",
) -> int:
    """Peak bytes of one statistics call: what it returns plus each worker's head and chunk tensors
    (``chunk`` None: ``default_chunk_size``). ``backend`` "triton" counts the fused kernel's case: no
    ``chunk x keys`` buffers, per-query sums and the top-k mass rows in chunks (triton_stats._top_mass)."""
    rows = max(1, min(chunk or default_chunk_size(shape.num_k, device), shape.num_q))
    if backend == "triton":
        per_query = 6 * shape.batch * shape.heads * shape.num_q * FLOAT32  # log-sum-exp, row max, features
        top = min(rows, top_rows(shape, shape.num_q, top_mass))
        keys = shape.num_k * shape.head_dim * FLOAT32
        half = math.ceil(shape.num_k * max(TOP_FRACTIONS))
        selection = top * (4 * shape.num_k * FLOAT32 + shape.num_k + half * (FLOAT32 + INDEX))
        return output_bytes(shape, compute_output) + per_query + keys + selection
    workers = workers_for(shape, device, threads)
    per_worker = head_bytes(shape, compute_output) + chunk_bytes(shape, rows, top_mass, compute_output)
    return output_bytes(shape, compute_output) + workers * per_worker


def choose_chunk_size(
    available_bytes: int,
    shape: CallShape,
    *,
    device: str = "cpu",
    threads: int = 1,
    top_mass: str = "auto",
    compute_output: bool = False,
    backend: str = "torch",
) -> int | None:
    """The largest chunk (query rows) up to the device's default whose statistics fit ``available_bytes``;
    None when not even MIN_CHUNK rows (or every query, when there are fewer) fit."""
    ceiling = min(default_chunk_size(shape.num_k, device), shape.num_q)
    floor = min(MIN_CHUNK, ceiling)

    def fits(rows: int) -> bool:
        need = statistics_bytes(
            shape, rows, device=device, threads=threads, top_mass=top_mass, compute_output=compute_output,
            backend=backend,
        )  # fmt: skip
        return need <= available_bytes

    if not fits(floor):
        return None
    low, high = floor, ceiling
    while low < high:  # bytes grow with the rows: the last row count that fits
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    return low
