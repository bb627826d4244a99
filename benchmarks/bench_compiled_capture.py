"""What compile support costs at real sizes: one forward of a real-width Wan2.1-T2V-1.3B transformer (12 heads x
128, ffn 8960, text 512 x 4096, seeded random weights, ``--blocks`` blocks) at 480 x 832 x ``--frames`` frames
(5 frames: 2 x 30 x 52 = 3,120 video tokens), eager and compiled, with and without ``capture`` open.

Variants (each on its own copy of the model; the first call of each is timed apart as its warm-up, which holds
the compilation):
  eager                  no compilation, no capture
  eager+capture          capture of every layer (its statistics cost, the baseline for the capture rows)
  regional               diffusers' compile_repeated_blocks(fullgraph=True) (Inductor), no capture
  regional+capture       the same, every layer observed: the observed blocks run eagerly while capture is open
  regional+capture L0    only layer 0 observed: the other blocks stay compiled
  model                  torch.compile(transformer) (Inductor, graphs may break), no capture
  model+capture          the same, every layer observed: the graph breaks around each observed attention module

Usage: python benchmarks/bench_compiled_capture.py [--blocks 2] [--frames 5] [--repeats 3] [--device auto]
       [--variants eager regional ...] [--out FILE]
Results: benchmarks/results/cpu-2core-compiled-capture.txt. Expected on the 2-core CPU: about 10-15 minutes (most
of it Inductor compiling on first calls).
"""

from __future__ import annotations

import argparse
import copy
import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from bench_common import Report, interleaved, machine_lines, resolve_device, timed

from vditscope.adapters.published import published_model
from vditscope.adapters.real_shaped import real_shaped_transformer
from vditscope.capture import capture

VARIANTS = ("eager", "eager+capture", "regional", "regional+capture", "regional+capture L0", "model", "model+capture")


def inputs(frames: int, device: str, dtype: torch.dtype, seed: int) -> dict[str, Any]:
    """One forward's inputs at 480 x 832: latents (1, 16, latent frames, 60, 104), 512 text tokens of width 4096."""
    g = torch.Generator().manual_seed(seed)
    latent_frames = (frames - 1) // 4 + 1
    return {
        "hidden_states": torch.randn(1, 16, latent_frames, 60, 104, generator=g).to(device, dtype),
        "encoder_hidden_states": (torch.randn(1, 512, 4096, generator=g) * 0.2).to(device, dtype),
        "timestep": torch.tensor([500.0], device=device),
        "return_dict": False,
    }


def variant_model(base: torch.nn.Module, name: str) -> torch.nn.Module:
    """A copy of the model compiled as the variant says."""
    model = copy.deepcopy(base)
    if name.startswith("regional"):
        model.compile_repeated_blocks(fullgraph=True)
    elif name.startswith("model"):
        model = torch.compile(model)
    return model


def variant_call(model: torch.nn.Module, name: str, kwargs: dict[str, Any]) -> Callable[[], torch.Tensor]:
    """One forward under the variant's capture (none, every layer, or layer 0)."""

    def session() -> AbstractContextManager[Any]:
        if not name.endswith(("capture", "L0")):
            return nullcontext()
        return capture(model, layers=[0] if name.endswith("L0") else None, map_tiles=64)

    def call() -> torch.Tensor:
        with torch.no_grad(), session():
            return model(**kwargs)[0]

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = resolve_device(args.device)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    with Report(args.out) as report:
        for line in machine_lines(device):
            report(line)
        base = real_shaped_transformer(published_model("Wan2.1-T2V-1.3B"), args.blocks, args.seed).to(device, dtype)
        kwargs = inputs(args.frames, device, dtype, args.seed + 1)
        grid = kwargs["hidden_states"].shape[2] * 30 * 52
        report(f"# Wan2.1-T2V-1.3B width, {args.blocks} blocks, {grid} video tokens, {dtype}, {args.repeats} repeats")
        calls: dict[str, Callable[[], torch.Tensor]] = {}
        warmups: dict[str, float] = {}
        outputs: dict[str, torch.Tensor] = {}
        for name in args.variants:
            calls[name] = variant_call(variant_model(base, name), name, kwargs)
            warmups[name], outputs[name] = timed(calls[name], device)
            report(f"# warm-up {name}: {warmups[name]:.1f} s")
        medians = interleaved(calls, args.repeats, device)
        reference = outputs.get("eager", next(iter(outputs.values())))
        report(f"{'variant':<22} {'forward s':>9} {'vs eager':>8} {'warm-up s':>9} {'max |out - eager|':>17}")
        eager = medians.get("eager")
        for name in args.variants:
            ratio = f"{medians[name] / eager:>8.2f}" if eager else f"{'n/a':>8}"
            diff = float((outputs[name].float() - reference.float()).abs().max())
            report(f"{name:<22} {medians[name]:>9.2f} {ratio} {warmups[name]:>9.1f} {diff:>17.2e}")


if __name__ == "__main__":
    main()
