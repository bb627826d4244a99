"""Exact sparse attention: drop each query's bottom-k share or all but its top-p mass of keys, with a
temperature, streamed over query chunks so no N x N map is ever held.

Per chunk, the scores are computed once in log2 units (scale / temperature * log2(e) folded into
the queries, so the softmax is one exp2), into a preallocated buffer. Each row's cut-off score is
found exactly by probing thresholds on that buffer: one in-place comparison and one row sum per
probe; a Gaussian first guess, a Newton and a secant step, then regula falsi on the bracket the
probes keep; rows copied into a smaller buffer as others settle; an exact sort for any row left
after MAX_ROUNDS. Keys scored below the cut-off get weight zero and the rest are renormalized.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch

from .streaming import (
    LOG2E,
    MASKED,
    MIN_CHUNK,
    check_attention_inputs,
    checked_scale,
    chunk_rows,
    default_chunk_size,
    prepare_mask,
    run_over_heads,
)

LN2 = math.log(2.0)
# Finite stand-in for +inf when masked keys must not be a row's minimum (BIG + MASKED > 0).
BIG = 2.0e30
# Scores per chunk on CPU (8 MiB per buffer): 512 query rows at 4k keys, 256 at 8k.
SPARSE_CHUNK_ELEMENTS = 1 << 21
# Key columns sampled for each row's mean and spread (the first guess of its cut-off).
MOMENT_SAMPLE = 512
# Probes with a Newton or secant step (then regula falsi), and probes before unsettled rows are sorted.
SECANT_ROUNDS = 2
MAX_ROUNDS = 40
# Unsettled rows are copied into a spare buffer once they are at most this share of the searched rows.
COMPACT_SHARE = 0.5
# floor(bottom_k * n) is taken with this tolerance, so that 0.29 of 100 keys drops 29.
FLOOR_TOLERANCE = 1e-9
# A float32 row sum of weights is trusted to decide F(x) <= budget when it is farther than this
# share of the row's total from the budget; nearer, the row is summed again in float64.
SUM_TOLERANCE = 1e-5


class SparsityStats(dict):
    """What one sparse attention call dropped (a dict of (B, H) float32 tensors, keys also attributes).

    ``mass_dropped``: mean over queries (with a visible key) of the dense softmax mass of the dropped
    keys. ``entries_dropped``: share of the visible (query, key) entries that were dropped.
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def score_factor(scale: float, temperature: float) -> float:
    """The factor folded into the queries: scores q k^T times it are logits / temperature in log2 units."""
    return scale / temperature * LOG2E


def check_sparsity(bottom_k: float, top_p: float | None, temperature: float) -> None:
    """Raise ValueError unless bottom_k in [0, 1), top_p None or in (0, 1], temperature > 0, one mode."""
    if not 0.0 <= bottom_k < 1.0:
        raise ValueError(f"bottom_k must be in [0, 1), got {bottom_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if not (0.0 < temperature < math.inf):
        raise ValueError(f"temperature must be a positive finite number, got {temperature}")
    if bottom_k > 0.0 and top_p is not None:
        raise ValueError("bottom_k and top_p cannot both be active: pass one of them")


def sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None = None,
    bottom_k: float = 0.0,
    top_p: float | None = None,
    temperature: float = 1.0,
    attn_mask: torch.Tensor | None = None,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, SparsityStats]:
    """Attention with each query's lowest-scored keys dropped (exactly), and its statistics.

    q (B, Hq, Nq, D), k (B, Hk, Nk, D), v (B, Hk, Nk, Dv) as for torch SDPA; Hq may be a multiple of
    Hk (grouped-query heads). ``attn_mask``: boolean (True = attend) or additive, broadcastable to
    (B, Hq, Nq, Nk); additive values <= -1e4 hide the key. Only visible keys count below.

    The scores s = q k^T * scale / temperature (+ the additive mask, not divided) are the float32
    values of one chunk's matrix product. Per query row, with n visible keys:

    - ``bottom_k`` in [0, 1): m = floor(bottom_k * n) (1e-9 tolerance); keep every key whose score
      is >= the (m + 1)-th smallest visible score. Ties at the cut-off are kept, so at most m keys
      are dropped (exactly m when the cut-off score is not tied with a lower one).
    - ``top_p`` in (0, 1]: with the dense float32 weights w = exp2(s - max) and Z = sum(w), the
      cut-off is the largest score t such that the keys scored below t weigh at most (1 - top_p) Z
      (float64 sums); keys with score >= t are kept. This is the smallest set of highest-weight
      keys holding at least top_p of the mass, plus any keys tied with its lowest score.
      top_p = 1 keeps every key whose float32 weight is non-zero.

    The kept weights are renormalized. With bottom_k = 0 and top_p None the result is
    F.scaled_dot_product_attention(q, k, v, attn_mask, scale=scale / temperature); rows without a
    visible key give 0. Returns (out in q's dtype, SparsityStats with ``mass_dropped`` and
    ``entries_dropped``, both (B, Hq) float32).
    """
    check_attention_inputs(q, k, v, attn_mask)
    check_sparsity(bottom_k, top_p, temperature)
    batch, q_heads, num_q, dim = q.shape
    kv_heads, num_k, dim_v = k.shape[1], k.shape[2], v.shape[-1]
    group = q_heads // kv_heads
    device = q.device
    scale = checked_scale(scale, dim)
    factor = score_factor(scale, temperature)
    chunk = chunk_rows(chunk_size, sparse_chunk_size(num_k, device), num_q)
    mask = prepare_mask(attn_mask, batch, q_heads, num_q, num_k)
    out = torch.zeros(batch, q_heads, num_q, dim_v, dtype=q.dtype, device=device)
    # per head: dropped mass summed over rows, dropped entries, visible entries, rows with a visible key
    sums = torch.zeros(batch, q_heads, 4, dtype=torch.float64, device=device)
    if num_q == 0 or num_k == 0:
        return out, _finish(sums)

    def process(pairs: list[tuple[int, int]], single_thread: bool) -> None:
        """Heads of the given (batch, key head) pairs, with this worker's own chunk buffers."""
        if single_thread:
            torch.set_num_threads(1)  # per-thread setting: the caller's threads are untouched
        buffers = _Buffers.allocate(chunk, num_k, dim_v, bottom_k > 0.0 or top_p is not None, top_p is not None, device)
        for b, hk in pairs:
            keys_t = k[b, hk].to(torch.float32).t().contiguous()
            values = v[b, hk].to(torch.float32).contiguous()
            for g in range(group):
                h = hk * group + g
                queries = q[b, h].to(torch.float32) * factor
                head_mask = mask[b, h] if mask is not None else None
                for r0 in range(0, num_q, chunk):
                    r1 = min(num_q, r0 + chunk)
                    sums[b, h] += _chunk_step(
                        queries[r0:r1], keys_t, values, r0, buffers, head_mask, bottom_k, top_p, out[b, h, r0:r1]
                    )

    run_over_heads(process, batch, kv_heads, num_q * num_k, device, "vditscope-sparse")
    return out, _finish(sums)


def sparse_chunk_size(num_keys: int, device: torch.device | str = "cpu") -> int:
    """Query rows per chunk: ``default_chunk_size``, but on CPU at most SPARSE_CHUNK_ELEMENTS scores per
    chunk, since the repeated counting passes run faster on buffers that stay in cache."""
    rows = default_chunk_size(num_keys, device)
    if torch.device(device).type == "cpu":
        rows = min(rows, max(MIN_CHUNK, SPARSE_CHUNK_ELEMENTS // max(num_keys, 1)))
    return rows


def _finish(sums: torch.Tensor) -> SparsityStats:
    """Per-head means from the summed (dropped mass, dropped entries, visible entries, rows)."""
    mass = sums[..., 0] / sums[..., 3].clamp(min=1)
    entries = sums[..., 1] / sums[..., 2].clamp(min=1)
    return SparsityStats(mass_dropped=mass.to(torch.float32), entries_dropped=entries.to(torch.float32))


@dataclass
class _Buffers:
    """One worker's preallocated chunk buffers (chunk x Nk float32 unless said otherwise)."""

    scores: torch.Tensor
    probs: torch.Tensor
    work: torch.Tensor  # comparison results and scratch
    product: torch.Tensor  # chunk x Dv
    # two pairs (scores, weights or None) for the rows still searched, copied alternately (sparse modes)
    spares: tuple[tuple[torch.Tensor, torch.Tensor | None], ...]

    @classmethod
    def allocate(
        cls, chunk: int, num_k: int, dim_v: int, sparse: bool, weighted: bool, device: torch.device
    ) -> _Buffers:
        def empty(cols: int = num_k) -> torch.Tensor:
            return torch.empty(chunk, cols, dtype=torch.float32, device=device)

        spares = tuple((empty(), empty() if weighted else None) for _ in range(2)) if sparse else ()
        return cls(empty(), empty(), empty(), empty(dim_v), spares)

    def rows(self, count: int) -> _Buffers:
        """The buffers of a chunk of ``count`` rows."""
        return _Buffers(self.scores[:count], self.probs[:count], self.work[:count], self.product[:count], self.spares)


def _chunk_step(
    queries: torch.Tensor,
    keys_t: torch.Tensor,
    values: torch.Tensor,
    row0: int,
    buffers: _Buffers,
    head_mask: torch.Tensor | None,
    bottom_k: float,
    top_p: float | None,
    out_rows: torch.Tensor,
) -> torch.Tensor:
    """One chunk of query rows: scores, cut-offs, kept weights, output rows; returns its four sums."""
    rows = queries.shape[0]
    buffers = buffers.rows(rows)
    scores, probs, work, product = buffers.scores, buffers.probs, buffers.work, buffers.product
    num_k = scores.shape[1]
    torch.mm(queries, keys_t, out=scores)
    masked = head_mask is not None
    if masked:
        chunk_mask = head_mask[row0 : row0 + rows]
        if chunk_mask.stride(0) == 0:  # key padding mask: the same row for every query
            chunk_mask = chunk_mask[:1]
        if chunk_mask.dtype == torch.bool:  # as an additive mask: the same scores, faster than masked_fill_
            chunk_mask = torch.where(chunk_mask, 0.0, MASKED)
        scores.add_(chunk_mask).clamp_(min=MASKED)
    sparse = bottom_k > 0.0 or top_p is not None
    row_max = scores.amax(dim=1)
    row_min = scores.amin(dim=1) if sparse and not masked else None  # (torch.aminmax is far slower on CPU)
    if masked:
        n_vis = torch.gt(scores, MASKED / 2, out=work).sum(dim=1)  # float32 counts are exact
        empty = n_vis == 0
        shift = row_max.masked_fill(empty, 0.0)
    else:
        n_vis = torch.full((rows,), float(num_k), dtype=torch.float32, device=scores.device)
        empty = None
        shift = row_max
    cut = None
    if sparse:
        cut = _cut_offs(buffers, row_min, row_max, shift, n_vis, empty, bottom_k, top_p)
        torch.ge(scores, cut[:, None], out=work)  # 1 = kept; hidden keys are below every cut-off
    if top_p is None:
        scores.sub_(shift[:, None])
        torch.exp2(scores, out=probs)
    # else the dense weights are already in probs (the search needed them)
    dense_sum = probs.sum(dim=1)
    if cut is not None:
        probs.mul_(work)
        kept_sum = probs.sum(dim=1)
    else:
        kept_sum = dense_sum
    inv = torch.where(kept_sum > 0, kept_sum.reciprocal(), torch.zeros_like(kept_sum))
    torch.mm(probs, values, out=product)
    out_rows.copy_(product.mul_(inv[:, None]))

    valid = dense_sum > 0
    sums = torch.zeros(4, dtype=torch.float64, device=scores.device)
    sums[2] = n_vis.sum(dtype=torch.float64)
    sums[3] = valid.sum()
    if cut is not None:
        mass = torch.where(valid, (dense_sum - kept_sum) / dense_sum.clamp(min=1e-30), 0.0)
        sums[0] = mass.sum(dtype=torch.float64)
        sums[1] = sums[2] - work.sum(dim=1).sum(dtype=torch.float64)  # visible minus kept
    return sums


def _cut_offs(
    buffers: _Buffers,
    row_min: torch.Tensor | None,
    row_max: torch.Tensor,
    shift: torch.Tensor,
    n_vis: torch.Tensor,
    empty: torch.Tensor | None,
    bottom_k: float,
    top_p: float | None,
) -> torch.Tensor:
    """Each row's cut-off score: keys scored below it are dropped (MASKED / 2 where none is: only
    hidden keys are below it). For top-p, leaves the dense weights exp2(s - max) in ``buffers.probs``.
    ``row_min`` is given without a mask."""
    scores, probs = buffers.scores, buffers.probs
    rows, num_k = scores.shape
    n_masked = num_k - n_vis.to(torch.float64)
    c_low = num_k - n_vis  # entries below the lowest visible score: the masked ones
    mean, std, low = _row_moments(scores, buffers.work, n_vis, row_min)
    high = torch.nextafter(row_max, torch.full_like(row_max, math.inf))
    if top_p is None:
        m = torch.floor(bottom_k * n_vis.to(torch.float64) + FLOOR_TOLERANCE)
        m = torch.minimum(m, (n_vis.to(torch.float64) - 1).clamp(min=0))
        need = m > 0
        z = torch.special.ndtri((m + 0.5) / n_vis.to(torch.float64).clamp(min=1))
        guess = mean + std * z
        slope = n_vis * torch.exp(-0.5 * z * z) / (std.clamp(min=1e-30) * math.sqrt(2 * math.pi))
        # counts are exact in float32 (below 2^24 keys)
        budget = (m + n_masked).to(torch.float32)
        search = _Search(buffers, None, budget, low, high, c_low, guess.float(), need, slope=slope.float())
    else:
        torch.sub(scores, shift[:, None], out=probs)
        probs.exp2_()
        total = probs.sum(dim=1).to(torch.float64)  # float32 sum: the search makes it exact where it matters
        need = torch.ones(rows, dtype=torch.bool, device=scores.device) if empty is None else ~empty
        # the mass below x of Gaussian scores in log2 units: Phi((x - mean - std^2 ln2) / std)
        quantile = torch.special.ndtri(torch.tensor(1.0 - top_p, dtype=torch.float64))
        guess = mean + std * std * LN2 + std * quantile
        slope = total * torch.exp(-0.5 * quantile * quantile) / (std.clamp(min=1e-30) * math.sqrt(2 * math.pi))
        budget = (1.0 - top_p) * total
        search = _Search(buffers, top_p, budget, low, high, c_low, guess.float(), need, slope=slope, total=total)
    cut = torch.full((rows,), MASKED / 2, dtype=torch.float32, device=scores.device)
    search.run(buffers.work, cut)
    return cut


@lru_cache(maxsize=8)
def _sample_columns(num_k: int, device: torch.device) -> torch.Tensor | None:
    """A fixed pseudo-random set of MOMENT_SAMPLE key columns (None: use them all)."""
    if num_k <= 2 * MOMENT_SAMPLE:
        return None
    generator = torch.Generator().manual_seed(num_k)
    return torch.randperm(num_k, generator=generator)[:MOMENT_SAMPLE].sort().values.to(device)


def _row_moments(
    scores: torch.Tensor, work: torch.Tensor, n_vis: torch.Tensor, row_min: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of each row's visible scores (float64, from a sample of the
    columns: they only place the first guess) and their minimum (float32, exact). ``row_min`` is
    given without a mask; with one, ``work`` must hold the visibility (1.0 / 0.0) of every entry, and
    it is overwritten."""
    masked = row_min is None
    columns = _sample_columns(scores.shape[1], scores.device)
    sample = scores if columns is None else scores.index_select(1, columns)
    if masked:
        seen = sample > MASKED / 2
        count = seen.sum(dim=1).to(torch.float64).clamp(min=1)
        sample = sample * seen  # masked entries: MASKED * 0 = 0
    else:
        count = torch.tensor(float(sample.shape[1]), dtype=torch.float64, device=scores.device)
    mean = sample.sum(dim=1).to(torch.float64) / count
    square = torch.linalg.vector_norm(sample, dim=1).to(torch.float64).square() / count
    std = (square - mean * mean).clamp(min=0).sqrt()
    if masked:  # hidden entries become BIG + MASKED > 0: never the minimum
        row_min = work.sub_(1.0).mul_(-BIG).add_(scores).amin(dim=1)
    return mean, std, row_min


class _Search:
    """Each row's cut-off t, the largest score with F(t) <= budget, by probing thresholds x.

    F(x) = weight of the entries scored below x: a count (bottom-k; masked entries count too) or the
    dense float32 weights summed (top-p: float32 sums, redone in float64 with a float64 budget for
    rows whose sum is near the budget). One probe is one in-place comparison of the row with x and
    one row sum. The probes keep a bracket lo <= t < hi: the first is a Gaussian guess, the next
    SECANT_ROUNDS take a Newton step with the model's slope and then secant slopes (when inside the
    bracket), the others regula falsi on the bracket (Illinois-weighted for top-p).

    A row is settled when the entries below lo are exactly those below t: when lo and hi are
    adjacent floats; when counting, when F(lo) = budget; for top-p, when [lo, hi) holds one entry.
    A settled row probes lo again, which leaves its state as it is. Unsettled rows are copied into a
    spare buffer (alternately) when at most COMPACT_SHARE of the searched rows are left.
    """

    def __init__(
        self,
        buffers: _Buffers,
        top_p: float | None,
        budget: torch.Tensor,
        low: torch.Tensor,
        high: torch.Tensor,
        c_low: torch.Tensor,
        guess: torch.Tensor,
        need: torch.Tensor,
        slope: torch.Tensor | None = None,
        total: torch.Tensor | None = None,
    ) -> None:
        scores = buffers.scores
        rows, num_k = scores.shape
        device = scores.device
        self.top_p = top_p
        self.spares = buffers.spares
        self.region = -1  # where the searched rows are: -1 the chunk buffers, 0 / 1 a spare
        self.scores = scores
        self.weights = buffers.probs if top_p is not None else None
        self.rows = torch.arange(rows, device=device)  # chunk row of each searched row
        self.searched: torch.Tensor | None = need  # rows whose result is wanted (None: all)
        self.active = need.clone()
        self.budget, self.lo, self.hi, self.c_lo, self.guess = budget, low, high, c_low, guess
        self.c_hi = torch.full_like(c_low, float(num_k))
        self.slope = slope  # of F at the last probe: the Gaussian model's first, then secants
        self.x_last: torch.Tensor | None = None
        self.f_last: torch.Tensor | None = None
        if top_p is not None:
            self.total = total.clone()
            self.f_lo, self.f_hi = torch.zeros_like(total), total.clone()
            self.exact = torch.zeros(rows, dtype=torch.bool, device=device)
            self.w_lo = torch.ones_like(total)
            self.w_hi = torch.ones_like(total)
            self.last_le = torch.full((rows,), -1, dtype=torch.int8, device=device)  # no step yet

    def _state(self) -> tuple[str, ...]:
        names = ("rows", "budget", "lo", "hi", "c_lo", "c_hi", "guess", "slope", "x_last", "f_last")
        if self.top_p is None:
            return names
        return (*names, "f_lo", "f_hi", "total", "exact", "w_lo", "w_hi", "last_le")

    def _flush(self, cut: torch.Tensor) -> None:
        """Write out the results of the settled rows."""
        settled = ~self.active if self.searched is None else self.searched & ~self.active
        sel = settled.nonzero().squeeze(1)
        if not sel.numel():
            return
        cut[self.rows[sel]] = self.lo[sel]

    def _keep(self, cut: torch.Tensor) -> None:
        """Write out the settled rows, then continue with the others only, copied into a spare."""
        self._flush(cut)
        sel = self.active.nonzero().squeeze(1)
        for name in self._state():
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value[sel])
        self.region = 1 if self.region == 0 else 0
        count = sel.numel()
        spare_scores, spare_weights = self.spares[self.region]
        self.scores = torch.index_select(self.scores, 0, sel, out=spare_scores[:count])
        if self.weights is not None:
            self.weights = torch.index_select(self.weights, 0, sel, out=spare_weights[:count])
        self.active = torch.ones(count, dtype=torch.bool, device=self.lo.device)
        self.searched = None

    def _weigh(self, below: torch.Tensor) -> torch.Tensor:
        """F(x) per row from the 0/1 comparison rows ``below`` (overwritten), float64-exact near the budget."""
        f = below.mul_(self.weights).sum(dim=1).to(torch.float64)
        near = ((f - self.budget).abs() <= SUM_TOLERANCE * self.total) & self.active
        if bool(near.any()):
            idx = near.nonzero().squeeze(1)
            fresh = idx[~self.exact[idx]]
            if fresh.numel():  # the budget from a float64 total
                total = self.weights[fresh].to(torch.float64).sum(dim=1)
                self.budget[fresh] = (1.0 - self.top_p) * total
                self.total[fresh] = total
                self.exact[fresh] = True
            f[idx] = below[idx].to(torch.float64).sum(dim=1)
        return f

    def _propose(self, round_: int) -> torch.Tensor:
        """The next threshold of every row (float32, strictly inside its bracket; lo if settled)."""
        if round_ == 0:
            x = self.guess
        elif self.top_p is None:
            # aim between the budget-th and the next entry: F(x) = budget
            x = torch.lerp(self.lo, self.hi, (self.budget - self.c_lo) / (self.c_hi - self.c_lo))
            if round_ <= SECANT_ROUNDS:
                step = self.x_last + (self.budget - self.f_last) / self.slope
                x = torch.where((step > self.lo) & (step < self.hi), step, x)
        else:
            g_lo = (self.budget - self.f_lo) * self.w_lo
            g_hi = (self.f_hi - self.budget) * self.w_hi
            x = torch.lerp(self.lo.to(torch.float64), self.hi.to(torch.float64), g_lo / (g_lo + g_hi))
            if round_ <= SECANT_ROUNDS and self.slope is not None:
                step = self.x_last + (self.budget - self.f_last) / self.slope
                x = torch.where((step > self.lo) & (step < self.hi), step, x)
        x = x.to(torch.float32).clamp_(min=torch.nextafter(self.lo, self.hi), max=torch.nextafter(self.hi, self.lo))
        return torch.where(self.active, x, self.lo)

    def run(self, work: torch.Tensor, cut: torch.Tensor) -> None:
        """Settle every row, writing its cut-off into ``cut``."""
        left = int(self.active.sum())
        if left == 0:
            return
        if left <= COMPACT_SHARE * self.scores.shape[0]:
            self._keep(cut)
        inf = torch.tensor(math.inf, dtype=torch.float32, device=self.lo.device)
        counting = self.top_p is None
        for round_ in range(MAX_ROUNDS):
            x = self._propose(round_)
            n = self.scores.shape[0]
            below = torch.lt(self.scores, x.unsqueeze(1), out=work[:n])
            c = below.sum(dim=1)
            if counting:
                if 0 < round_ < SECANT_ROUNDS:
                    secant = (c - self.f_last) / (x - self.x_last)
                    self.slope = torch.where(secant > 0, secant, math.nan)  # nan: regula falsi next
                self.x_last, self.f_last = x, c
                le = c <= self.budget
            else:
                f = self._weigh(below)
                if self.slope is not None:
                    if 0 < round_ < SECANT_ROUNDS:
                        secant = (f - self.f_last) / (x - self.x_last).to(torch.float64)
                        self.slope = torch.where(secant > 0, secant, math.nan)
                    self.x_last, self.f_last = x, f
                le = f <= self.budget
                le8 = le.to(torch.int8)  # Illinois: halve the weight of an end kept twice in a row
                same = le8 == self.last_le
                self.w_lo = torch.where(~le & same, self.w_lo * 0.5, 1.0)
                self.w_hi = torch.where(le & same, self.w_hi * 0.5, 1.0)
                self.last_le = le8
                self.f_lo = torch.where(le, f, self.f_lo)
                self.f_hi = torch.where(le, self.f_hi, f)
            self.lo = torch.where(le, x, self.lo)
            self.c_lo = torch.where(le, c, self.c_lo)
            self.hi = torch.where(le, self.hi, x)
            self.c_hi = torch.where(le, self.c_hi, c)
            done = self.hi <= torch.nextafter(self.lo, inf)
            if counting:
                done |= self.c_lo == self.budget
            else:
                done |= self.c_hi - self.c_lo <= 1
            self.active &= ~done
            left = int(self.active.sum())
            if left == 0:
                self._flush(cut)
                return
            if left <= COMPACT_SHARE * n:
                self._keep(cut)
        self._flush(cut)
        sel = self.active.nonzero().squeeze(1)
        rows = self.rows[sel]
        if counting:
            cut[rows] = _sorted_cut_offs(self.scores[sel], None, self.budget[sel].to(torch.float64))
        else:
            weights = self.weights[sel]
            budget = (1.0 - self.top_p) * weights.to(torch.float64).sum(dim=1)
            cut[rows] = _sorted_cut_offs(self.scores[sel], weights, budget)


def _sorted_cut_offs(scores: torch.Tensor, weights: torch.Tensor | None, budget: torch.Tensor) -> torch.Tensor:
    """The same cut-offs by sorting each row: the largest score t with F(t) <= budget."""
    values, order = torch.sort(scores, dim=1)
    w = torch.ones_like(values, dtype=torch.float64) if weights is None else weights.gather(1, order).to(torch.float64)
    before = torch.zeros_like(w)  # weight of the entries sorted before each one (ties: an upper bound)
    before[:, 1:] = w[:, :-1].cumsum(dim=1)
    last = (before <= budget[:, None]).sum(dim=1) - 1
    return values.gather(1, last[:, None]).squeeze(1)
