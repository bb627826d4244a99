"""Block-sparse attention (compiled FlexAttention over a BlockMask built from block indices) against dense SDPA.

Two kinds of rows, each timed in one process, interleaved (dense, sparse, dense, sparse, ...; median of the
repeats after a warm-up), the first call (FlexAttention compilation for a new input signature) reported apart:

- ``band d``: a synthetic selection of exactly the block density d (each query block keeps the round(d * nb) key
  blocks of a circular band around itself), ``BlockSelection`` built directly and run by ``flex_block_attention``,
  at each size N of ``--sizes``.
- the real methods (spatial, temporal, tiles, blocks at a few pooled masses) on a Wan-like layout, F x 30 x 52
  video tokens plus 512 text tokens (``--text``), through ``block_sparse_attention(..., backend="flex",
  measure=False)``. ``density`` is the measured share of block pairs computed (mean over heads), ``tokens`` the
  share of (query, key) entries attended. q and k carry a smooth spatio-temporal signal (random Fourier
  features of frame, row and column) so that the pooled-mass ``blocks`` method selects local blocks the way it
  does on real activations (random q, k make every block equally heavy).

Sparse times include building the BlockMask (and, for the methods, selecting the blocks). On CPU everything is
float32; on CUDA bf16, dense SDPA restricted to FlashAttention. Before timing, every configuration is checked once
at a small size against a dense masked reference (SDPA with the token mask for the bands, the ``backend="torch"``
path for the methods), so the benchmark cannot time a wrong kernel. The issue's target: at ~25% block density,
N = 8,192, H = 12, D = 128, block-sparse >= 2.5x faster than dense SDPA.

Usage: python benchmarks/bench_block_sparse.py [--sizes 8192 16384] [--large] [--densities 0.1 0.25 0.5]
       [--wan-frames 5] [--masses 0.5 0.9 0.95] [--repeats 3] [--device auto|cpu|cuda] [--max-dense-s 90]
       [--quick] [--out FILE]
Sizes whose estimated dense call (quadratic from the last measured size) exceeds --max-dense-s are skipped.
Results: --out benchmarks/results/cpu-2core-block-sparse.txt (the machine in the name and the header).
Expected on the 2-core CPU: defaults about 4-5 minutes; --large adds about 12 minutes for N = 32,768 (75,000 is
skipped on this CPU: one dense call there is estimated at ~4 minutes; raise --max-dense-s to force it).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from bench_common import Report, interleaved, machine_lines, resolve_device, timed

from vditscope.layout import TokenLayout
from vditscope.stats.block_sparse import (
    BLOCK_SIZE,
    FLEX_TIMINGS,
    BlockSelection,
    block_sparse_attention,
    flex_block_attention,
    kept_entries,
    num_blocks,
    select_blocks,
)

LARGE_SIZES = (32768, 75000)
WAN_HEIGHT, WAN_WIDTH, WAN_TEXT = 30, 52, 512
TARGET_DENSITY, TARGET_SIZE, TARGET_SPEEDUP = 0.25, 8192, 2.5
PEAK_LOGIT = 8.0  # the score of two co-located video tokens in local_qkv
LENGTH_SCALES = (1.0, 6.0, 12.0)  # frames, rows, columns: the smoothness of the q, k signal in local_qkv


@dataclass(frozen=True)
class Method:
    """One real method row: the mask kind and, for ``blocks``, the pooled mass."""

    kind: str
    block_mass: float | None = None

    @property
    def label(self) -> str:
        return self.kind if self.block_mass is None else f"blocks@{self.block_mass:g}"


@dataclass
class Row:
    """One timed configuration."""

    n: int
    label: str
    density: float
    tokens: float
    dense_s: float
    sparse_s: float
    first_s: float
    compile_s: float

    @property
    def speedup(self) -> float:
        return self.dense_s / self.sparse_s


def dtype_for(device: str) -> torch.dtype:
    return torch.bfloat16 if device.startswith("cuda") else torch.float32


def random_qkv(n: int, heads: int, dim: int, device: str, seed: int) -> tuple[torch.Tensor, ...]:
    """Seeded standard-normal q, k, v (1, H, N, D) in the device's benchmark dtype."""
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(1, heads, n, dim, generator=g).to(device, dtype_for(device)) for _ in range(3))


def local_qkv(layout: TokenLayout, n: int, heads: int, dim: int, device: str, seed: int) -> tuple[torch.Tensor, ...]:
    """q, k, v (1, H, N, D) where video q and k share smooth random Fourier features of (frame, row, column), so
    nearby tokens score higher (attention is local, as in real video DiTs); text tokens and v are noise."""
    g = torch.Generator().manual_seed(seed)
    index = torch.arange(n)
    rel = index - layout.video_start
    is_video = (rel >= 0) & (rel < layout.num_video)
    rel = rel.clamp(0, layout.num_video - 1)
    coords = torch.stack(
        [rel // layout.tokens_per_frame, (rel % layout.tokens_per_frame) // layout.width, rel % layout.width]
    ).T.float()  # (N, 3)
    freqs = torch.randn(heads, 3, dim // 2, generator=g) / torch.tensor(LENGTH_SCALES)[None, :, None]
    phase = torch.einsum("nc,hcf->hnf", coords, freqs)
    features = torch.cat([phase.sin(), phase.cos()], -1) * math.sqrt(2.0)  # (H, N, D), unit variance
    features = features * is_video[None, :, None]
    amplitude = math.sqrt(PEAK_LOGIT / math.sqrt(dim))  # co-located video tokens score ~PEAK_LOGIT
    q = torch.randn(1, heads, n, dim, generator=g) * 0.5 + amplitude * features[None]
    k = torch.randn(1, heads, n, dim, generator=g) * 0.5 + amplitude * features[None]
    v = torch.randn(1, heads, n, dim, generator=g)
    return tuple(t.to(device, dtype_for(device)) for t in (q, k, v))


def band_selection(n: int, heads: int, density: float, device: str) -> BlockSelection:
    """Each query block keeps round(density * nb) key blocks (at least one): a circular band centred on itself,
    so every row holds exactly the same number of blocks."""
    nb = num_blocks(n, BLOCK_SIZE)
    width = max(1, min(nb, round(density * nb)))
    offsets = torch.arange(width) - width // 2
    rows = torch.arange(nb)
    keep = torch.zeros(nb, nb, dtype=torch.bool)
    keep[rows[:, None], (rows[:, None] + offsets[None, :]) % nb] = True
    return BlockSelection(
        keep=keep[None].expand(heads, -1, -1).contiguous().to(device), windows=None, kinds=["band"] * heads
    )


def wan_layout(frames: int, height: int, width: int, text: int, position: str) -> tuple[TokenLayout, int]:
    """(layout, N) of frames x height x width video tokens with ``text`` text tokens before or after (or none)."""
    video = frames * height * width
    if text == 0 or position == "none":
        return TokenLayout(frames=frames, height=height, width=width), video
    if position == "before":
        return TokenLayout(frames=frames, height=height, width=width, video_start=text, text=(0, text)), video + text
    return TokenLayout(frames=frames, height=height, width=width, text=(video, video + text)), video + text


def dense_context(device: str) -> AbstractContextManager[Any]:
    """On CUDA, dense SDPA is restricted to FlashAttention (the baseline a GPU user runs); on CPU, torch's own
    choice (its flash-style CPU kernel)."""
    if device.startswith("cuda"):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([SDPBackend.FLASH_ATTENTION])
    return nullcontext()


def dense_call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, device: str) -> Callable[[], torch.Tensor]:
    def call() -> torch.Tensor:
        with dense_context(device), torch.no_grad():
            return F.scaled_dot_product_attention(q, k, v)

    return call


def band_call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, selection: BlockSelection) -> Callable[[], Any]:
    scale = q.shape[-1] ** -0.5

    def call() -> torch.Tensor:
        with torch.no_grad():
            return flex_block_attention(q, k, v, selection, scale)

    return call


def method_call(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: TokenLayout, method: Method, backend: str = "flex"
) -> Callable[[], Any]:
    def call() -> torch.Tensor:
        with torch.no_grad():
            out, _, _ = block_sparse_attention(
                q, k, v, layout=layout, kind=method.kind, block_mass=method.block_mass, measure=False, backend=backend
            )
        return out

    return call


def method_densities(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: TokenLayout, method: Method
) -> tuple[float, float]:
    """(share of block pairs, share of (query, key) entries) the method computes on these inputs, mean over heads."""
    n = k.shape[2]
    selection = select_blocks(
        q, k, v, layout=layout, kind=method.kind, window=None, scale=q.shape[-1] ** -0.5, block_mass=method.block_mass
    )
    return float(selection.density.mean()), float(kept_entries(selection, layout, n).mean()) / n**2


def tolerance(device: str) -> float:
    return 3e-2 if device.startswith("cuda") else 2e-4


def check_bands(densities: list[float], heads: int, dim: int, device: str, report: Report) -> bool:
    """Flex output of each band against SDPA with the same token mask, at a small size."""
    n = 1000  # 8 blocks, the last one partial
    q, k, v = random_qkv(n, heads, dim, device, seed=1)
    ok = True
    for density in densities:
        selection = band_selection(n, heads, density, device)
        out = band_call(q, k, v, selection)()
        keys = torch.arange(n, device=device) // BLOCK_SIZE
        mask = selection.keep[:, keys[:, None], keys[None, :]]  # (H, N, N)
        expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask[None])
        error = (out.float() - expected).abs().max().item()
        ok &= error <= tolerance(device)
        report(
            f"#   band {density:g} (block density {float(selection.density.mean()):.3f}), N = {n}: "
            f"max |flex - masked SDPA| = {error:.2e}"
        )
    return ok


def check_methods(methods: list[Method], heads: int, dim: int, device: str, position: str, report: Report) -> bool:
    """Flex output of each method against its ``backend="torch"`` masked softmax on a small Wan-like layout."""
    layout, n = wan_layout(3, 12, 20, 64 if position != "none" else 0, position)
    q, k, v = local_qkv(layout, n, heads, dim, device, seed=2)
    ok = True
    for method in methods:
        fast = method_call(q, k, v, layout, method)()
        reference = method_call(q, k, v, layout, method, backend="torch")()
        error = (fast.float() - reference.float()).abs().max().item()
        ok &= error <= tolerance(device)
        density, tokens = method_densities(q, k, v, layout, method)
        report(
            f"#   {method.label} (density {density:.3f}, tokens {tokens:.3f}), 3 x 12 x 20 + {layout.num_text} text, "
            f"N = {n}: max |flex - torch reference| = {error:.2e}"
        )
    return ok


def time_row(
    n: int,
    label: str,
    density: float,
    tokens: float,
    dense: Callable[[], Any],
    sparse: Callable[[], Any],
    repeats: int,
    device: str,
) -> Row:
    """Time the first sparse call (compilation when its signature is new) apart, then interleave."""
    compiled_before = FLEX_TIMINGS.compile_s
    first_s, _ = timed(sparse, device)
    compile_s = FLEX_TIMINGS.compile_s - compiled_before
    medians = interleaved({"dense": dense, "sparse": sparse}, repeats, device)
    return Row(n, label, density, tokens, medians["dense"], medians["sparse"], first_s, compile_s)


HEADER = (
    f"{'N':>7} {'method':<13} {'density':>7} {'tokens':>7} {'dense ms':>10} {'sparse ms':>10} "
    f"{'speedup':>7} {'first s':>8} {'compile s':>9}"
)


def row_line(row: Row) -> str:
    return (
        f"{row.n:>7} {row.label:<13} {row.density:>7.3f} {row.tokens:>7.3f} {row.dense_s * 1e3:>10.1f} "
        f"{row.sparse_s * 1e3:>10.1f} {row.speedup:>7.2f} {row.first_s:>8.2f} {row.compile_s:>9.2f}"
    )


class DenseClock:
    """Skips sizes whose dense call would take too long, extrapolating quadratically from the last measurement."""

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self.last: tuple[int, float] | None = None

    def estimate(self, n: int) -> float | None:
        if self.last is None:
            return None
        size, seconds = self.last
        return seconds * (n / size) ** 2

    def allows(self, n: int) -> bool:
        estimate = self.estimate(n)
        return estimate is None or estimate <= self.limit_s

    def warm(self, n: int, dense: Callable[[], Any], device: str) -> float:
        seconds, _ = timed(dense, device)
        self.last = (n, seconds)
        return seconds


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[8192, 16384], help="N of the band rows")
    parser.add_argument("--large", action="store_true", help=f"also N = {', '.join(map(str, LARGE_SIZES))}")
    parser.add_argument("--densities", type=float, nargs="+", default=[0.1, 0.25, 0.5])
    parser.add_argument(
        "--wan-frames",
        type=int,
        nargs="*",
        default=[5],
        help="latent frames of the Wan-like method rows (5: 7,800 video tokens; 21: 32,760)",
    )
    parser.add_argument(
        "--text",
        choices=["after", "before", "none"],
        default="after",
        help="where the 512 text tokens of the Wan-like layout sit",
    )
    parser.add_argument("--masses", type=float, nargs="*", default=[0.5, 0.9, 0.95], help="block_mass rows")
    parser.add_argument(
        "--methods",
        nargs="*",
        default=["spatial", "temporal", "tiles"],
        choices=["spatial", "temporal", "tiles", "svg"],
        help="window methods timed",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument(
        "--max-dense-s", type=float, default=90.0, help="skip a size whose estimated dense call takes longer (seconds)"
    )
    parser.add_argument("--skip-check", action="store_true", help="do not check against the references first")
    parser.add_argument("--quick", action="store_true", help="a tiny configuration (under a minute): tests the script")
    parser.add_argument("--out", default=None, help="also write the printed table to this file")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.large:
        args.sizes = [*args.sizes, *(n for n in LARGE_SIZES if n not in args.sizes)]
    if args.quick:
        args.sizes, args.wan_frames, args.masses, args.repeats = [2048], [2], [0.9], 2
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    methods = [Method(kind) for kind in args.methods] + [Method("blocks", mass) for mass in args.masses]
    grid = (WAN_HEIGHT, WAN_WIDTH) if not args.quick else (15, 26)
    text = WAN_TEXT if not args.quick else 128
    with Report(args.out) as report:
        for line in machine_lines(device):
            report(line)
        report(
            f"# bench_block_sparse.py: device {device}, {dtype_for(device)}, q/k/v (1, {args.heads}, N, {args.dim}),"
            f" block {BLOCK_SIZE}, median of {args.repeats} interleaved dense/sparse runs after a warm-up"
            + (", QUICK configuration" if args.quick else "")
        )
        report(
            "# density: share of block pairs computed; tokens: share of (query, key) entries attended; first s:"
            " the first sparse call; compile s: FlexAttention compilation within it (new input signature)"
        )
        if not args.skip_check:
            report(f"# correctness at a small size (tolerance {tolerance(device):.0e}):")
            ok = check_bands(args.densities, args.heads, args.dim, device, report)
            ok &= check_methods(methods, args.heads, args.dim, device, args.text, report)
            if not ok:
                report("# FAILED: the sparse output differs from the masked reference; nothing timed")
                return 1
        rows: list[Row] = []
        clock = DenseClock(args.max_dense_s)
        report("\n## synthetic band selections (exact block density)\n" + HEADER)
        for n in sorted(args.sizes):
            if not clock.allows(n):
                report(f"{n:>7} skipped: one dense call estimated {clock.estimate(n):.0f} s > --max-dense-s")
                continue
            q, k, v = random_qkv(n, args.heads, args.dim, device, seed=n)
            dense = dense_call(q, k, v, device)
            clock.warm(n, dense, device)
            for density in args.densities:
                selection = band_selection(n, args.heads, density, device)
                measured = float(selection.density.mean())
                row = time_row(
                    n,
                    f"band {density:g}",
                    measured,
                    measured,
                    dense,
                    band_call(q, k, v, selection),
                    args.repeats,
                    device,
                )
                rows.append(row)
                report(row_line(row))
            del q, k, v
        for frames in args.wan_frames:
            layout, n = wan_layout(frames, *grid, text, args.text)
            report(
                f"\n## methods on a Wan-like layout: {frames} x {grid[0]} x {grid[1]} video + {layout.num_text} text"
                f" ({args.text}), N = {n}\n" + HEADER
            )
            if not clock.allows(n):
                report(f"{n:>7} skipped: one dense call estimated {clock.estimate(n):.0f} s > --max-dense-s")
                continue
            q, k, v = local_qkv(layout, n, args.heads, args.dim, device, seed=frames)
            dense = dense_call(q, k, v, device)
            clock.warm(n, dense, device)
            for method in methods:
                row = time_row(
                    n,
                    method.label,
                    *method_densities(q, k, v, layout, method),
                    dense,
                    method_call(q, k, v, layout, method),
                    args.repeats,
                    device,
                )
                rows.append(row)
                report(row_line(row))
            del q, k, v
        report(target_line(rows))
    return 0


def target_line(rows: list[Row]) -> str:
    """The issue's target: ~25% block density at N = 8,192 at least 2.5x faster than dense SDPA."""
    near = [r for r in rows if r.n == TARGET_SIZE and r.label.startswith("band") and abs(r.density - 0.25) < 0.02]
    if not near:
        return f"\n# target (band {TARGET_DENSITY:g} at N = {TARGET_SIZE}): not measured in this configuration"
    best = near[0]
    verdict = "met" if best.speedup >= TARGET_SPEEDUP else "NOT met"
    return (
        f"\n# target: band density {best.density:.3f} at N = {TARGET_SIZE}: {best.speedup:.2f}x dense SDPA "
        f"(>= {TARGET_SPEEDUP}x wanted): {verdict}"
    )


if __name__ == "__main__":
    sys.exit(main())
