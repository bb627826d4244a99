"""Top-k key mass per query: how much attention the largest ceil(f * N) weights of a row hold.

Exact per row by a partial sort; for long sequences the mean over queries is estimated from an
exact subset of rows with the per-row entropy and maximum weight (known for every row) as
control variates, which removes most of the sampling error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

TOP_FRACTIONS: tuple[float, ...] = (0.01, 0.05, 0.10, 0.20, 0.50)

# Below this many queries every row is measured exactly ("auto" mode).
EXACT_QUERY_LIMIT = 2048
# Above it, rows measured exactly: one in SAMPLE_STRIDE, but never fewer than MIN_SAMPLED_ROWS.
SAMPLE_STRIDE = 32
MIN_SAMPLED_ROWS = 128


def top_counts(num_valid: torch.Tensor, fractions: Sequence[float] = TOP_FRACTIONS) -> torch.Tensor:
    """ceil(f * n) for every row's number of valid keys n and every fraction f, at least 1: (rows, F)."""
    f = torch.tensor(fractions, dtype=torch.float64, device=num_valid.device)
    # float64 keeps ceil exact for the integers involved (f * n is never an integer by accident)
    counts = torch.ceil(num_valid.to(torch.float64)[:, None] * f[None, :] - 1e-9).long()
    return counts.clamp_(min=1)


def exact_top_mass(
    weights: torch.Tensor, num_valid: torch.Tensor | int, fractions: Sequence[float] = TOP_FRACTIONS
) -> torch.Tensor:
    """Mass of the ceil(f * n) largest normalized weights of each row: (rows, len(fractions)).

    ``weights`` (rows, N) must be normalized per row; masked keys must hold 0. When every row has
    the same number of visible keys, the sets are selected nested and unsorted (largest fraction
    first, each selection searching only the previous one), about 1.6x faster than a sorted top-k.
    An int ``num_valid`` says every row sees that many keys (no device-to-host synchronization).
    """
    masses = torch.empty(weights.shape[0], len(fractions), dtype=torch.float32, device=weights.device)
    if weights.shape[0] == 0:
        return masses
    if isinstance(num_valid, int):
        uniform = top_counts(torch.tensor([num_valid]), fractions)[0].tolist()
    else:
        counts = top_counts(num_valid, fractions)
        uniform = counts[0].tolist() if bool((counts == counts[:1]).all()) else None
    if uniform is not None:
        selected = weights
        for i in sorted(range(len(fractions)), key=lambda i: -fractions[i]):
            count = uniform[i]
            if count < selected.shape[-1]:
                selected = torch.topk(selected, count, dim=-1, largest=True, sorted=False).values
            masses[:, i] = selected.sum(-1, dtype=torch.float64)
        return masses
    kmax = int(counts.max())
    top = torch.topk(weights, kmax, dim=-1, largest=True, sorted=True).values
    cumulative = top.to(torch.float64).cumsum_(-1)
    return cumulative.gather(-1, counts - 1).to(torch.float32)


def sampled_rows(num_queries: int, mode: str) -> torch.Tensor | None:
    """Sorted query indices measured exactly, or None for all of them.

    The subset is a fixed pseudo-random draw (seeded by the query count), so results are
    reproducible and not aligned with the spatial grid (a strided subset is).
    """
    if mode == "exact" or (mode == "auto" and num_queries <= EXACT_QUERY_LIMIT):
        return None
    count = min(num_queries, max(MIN_SAMPLED_ROWS, math.ceil(num_queries / SAMPLE_STRIDE)))
    generator = torch.Generator().manual_seed(num_queries)
    return torch.randperm(num_queries, generator=generator)[:count].sort().values


def estimate_mean_top_mass(
    sample_mass: torch.Tensor,
    sample_features: torch.Tensor,
    all_features_mean: torch.Tensor,
) -> torch.Tensor:
    """Regression estimate of the mean top mass over all rows from an exact subset.

    sample_mass (n, F): exact top masses of the sampled rows; sample_features (n, P): per-row
    control variates of those rows; all_features_mean (P,): their mean over every row. The
    estimate is mean(y_s) + beta^T (mean_all(x) - mean_s(x)), beta fitted by least squares.
    """
    y = sample_mass.to(torch.float64)
    x = sample_features.to(torch.float64)
    y_mean = y.mean(0)
    x_mean = x.mean(0)
    xc = x - x_mean
    yc = y - y_mean
    # ridge term keeps the fit stable when a feature is constant (uniform attention)
    gram = xc.T @ xc + 1e-9 * torch.eye(x.shape[1], dtype=torch.float64, device=x.device) * max(1, x.shape[0])
    beta = torch.linalg.solve(gram, xc.T @ yc)
    estimate = y_mean + (all_features_mean.to(torch.float64) - x_mean) @ beta
    return estimate.clamp_(0.0, 1.0).to(torch.float32)
