"""End-to-end planned generation against dense: a sparsity plan applied with ``intervene(pipe, edits, fast=True)``
(block-sparse compiled FlexAttention, the dense SDPA call skipped where every head is edited) on a real diffusers
WanPipeline, timed interleaved with the dense generation (same seed), with PSNR/SSIM of planned vs dense frames.

(a) A real-width Wan2.1-T2V-1.3B transformer (patch (1, 2, 2), 12 heads x 128, ffn 8960, text_dim 4096,
    freq_dim 256, 16 latent channels, qk_norm rms_norm_across_heads, cross_attn_norm, eps 1e-6, rope_max_seq_len
    1024) with only ``--blocks`` blocks and seeded random weights, at 480 x 832 x 17 frames (5 x 30 x 52 = 7,800
    video tokens in self-attention), Wan's scheduler (UniPC, flow prediction, flow_shift 3), random seeded prompt
    embeddings (512 x 4096) given directly (no text encoder or tokenizer), and a tiny random AutoencoderKLWan.
    The denoising loop (output_type="latent": what a plan speeds up) is timed, interleaved, median of ``--repeats``
    after a one-step warm-up per variant (which holds FlexAttention's compilation, reported apart); each variant's
    latents are then decoded once (timed once: decoding is the same work for every variant) for PSNR/SSIM, and
    "e2e" adds that decode to the denoising time.
(b) The shipped tiny Wan (``vditscope.tiny_model_dir("tiny-wan")``, loaded as ``adapters/loaded.py`` does, with its
    vditscope.json generation settings): dense vs planned quality. Its self-attention has 576 tokens (4 heads x 32):
    its times are listed but say nothing about speed at real sizes.

Plans: every layer, step and branch edited with one mask: ``spatial`` (the query's own frame), ``temporal`` (its
own position in every frame), ``svg`` (per head, whichever of the two reproduces dense better), ``tiles`` (default
window 1 frame, 2 rows, 2 columns) and ``blocks@0.9`` (key blocks holding 90% of the pooled mass). The issue's target:
the planned generation at least 1.3x faster end to end than dense, with its PSNR. Random weights attend almost
uniformly, so the mass-based ``blocks`` plan keeps most blocks on (a); its quality loss on (b) is the meaningful
part.

Usage: python benchmarks/bench_planned_generation.py [--blocks 2] [--steps 2] [--repeats 2] [--guidance 1.0]
       [--height 480 --width 832 --frames 17] [--plans spatial tiles blocks@0.9] [--vae-dim 8] [--no-decode]
       [--skip-tiny] [--skip-wan] [--device auto|cpu|cuda] [--quick] [--out FILE]
Results: --out benchmarks/results/cpu-2core-planned-generation.txt (the machine in the name and the header).
Expected on the 2-core CPU with the defaults: about 5-6 minutes (more on a fresh machine: FlexAttention compiles).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from bench_common import Report, interleaved, machine_lines, resolve_device, timed

from vditscope.adapters.published import published_model
from vditscope.adapters.real_shaped import real_shaped_transformer
from vditscope.analyses.quality import latent_mse, psnr, ssim
from vditscope.capture.intervene import AttentionEdit, intervene
from vditscope.stats.block_sparse import FLEX_TIMINGS

PLANS: dict[str, tuple[AttentionEdit, ...]] = {
    "spatial": (AttentionEdit(mask="spatial"),),
    "temporal": (AttentionEdit(mask="temporal"),),
    "svg": (AttentionEdit(mask="svg"),),
    "tiles": (AttentionEdit(mask="tiles"),),
    "blocks@0.9": (AttentionEdit(mask="blocks", block_mass=0.9),),
}
DENSE = "dense"
TEXT_TOKENS, TEXT_DIM = 512, 4096
TARGET_SPEEDUP = 1.3


def wan_transformer(blocks: int, seed: int) -> Any:
    """The Wan2.1-T2V-1.3B transformer config (its published width) with ``blocks`` blocks, seeded random weights."""
    return real_shaped_transformer(published_model("Wan2.1-T2V-1.3B"), blocks, seed)


def tiny_vae(base_dim: int, seed: int) -> Any:
    """A small random AutoencoderKLWan with Wan's latent layout (16 channels, 8x spatial, 4x temporal)."""
    from diffusers import AutoencoderKLWan

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKLWan(base_dim=base_dim, z_dim=16, num_res_blocks=1)
    return vae.eval()


def wan_pipeline(blocks: int, vae_dim: int, device: str, dtype: torch.dtype, seed: int) -> Any:
    """A WanPipeline built in memory: real-width transformer, Wan's UniPC scheduler, tiny VAE, no text encoder."""
    from diffusers import UniPCMultistepScheduler, WanPipeline

    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=3.0
    )
    pipe = WanPipeline(
        tokenizer=None,
        text_encoder=None,
        vae=tiny_vae(vae_dim, seed + 1),
        scheduler=scheduler,
        transformer=wan_transformer(blocks, seed),
    )
    to_dtype(pipe.transformer, device, dtype)
    pipe.vae.to(device)  # the VAE stays float32, as Wan pipelines run it
    pipe.set_progress_bar_config(disable=True)
    return pipe


def to_dtype(model: Any, device: str, dtype: torch.dtype) -> None:
    """Move the model to the device and dtype, keeping its ``_keep_in_fp32_modules`` in float32 the way
    ``from_pretrained(torch_dtype=...)`` does (parameters and buffers whose dotted name has such a part)."""
    model.to(device)
    if dtype == torch.float32:
        return
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point():
            tensor.data = tensor.data.to(torch.float32 if keep & set(name.split(".")) else dtype)


def prompt_embeddings(seed: int, cfg: bool, device: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Seeded random umT5-like prompt embeddings (1, 512, 4096) (and negative ones under CFG), scaled like T5 output."""
    g = torch.Generator().manual_seed(seed)
    embeds = {"prompt_embeds": torch.randn(1, TEXT_TOKENS, TEXT_DIM, generator=g) * 0.2}
    if cfg:
        embeds["negative_prompt_embeds"] = torch.randn(1, TEXT_TOKENS, TEXT_DIM, generator=g) * 0.2
    return {name: tensor.to(device, dtype) for name, tensor in embeds.items()}


@dataclass
class Variant:
    """One variant (dense or a plan): its timings, sparsity and outputs."""

    name: str
    edits: tuple[AttentionEdit, ...]
    warmup_s: float = math.nan
    compile_s: float = 0.0
    run_s: float = math.nan
    sparsity: float = 0.0
    decode_s: float = math.nan
    latents: torch.Tensor | None = None
    frames: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)


def plan_context(pipe: Any, variant: Variant) -> AbstractContextManager[Any]:
    return nullcontext() if not variant.edits else intervene(pipe, variant.edits, fast=True)


def denoise_call(
    pipe: Any, variant: Variant, settings: dict[str, Any], embeds: dict[str, torch.Tensor], seed: int, device: str
) -> Callable[[], torch.Tensor]:
    """One seeded generation to latents under the variant's plan; records the plan's sparsity and notes."""

    def call() -> torch.Tensor:
        with plan_context(pipe, variant) as session:
            generator = torch.Generator(device=device).manual_seed(seed)
            result = pipe(generator=generator, output_type="latent", **embeds, **settings)
        if session is not None:
            variant.sparsity = session.totals.sparsity
            variant.notes = list(session.notes)
        variant.latents = result.frames.detach().cpu()  # the runs are seeded: every run of a variant gives these
        return result.frames

    return call


def decode(pipe: Any, latents: torch.Tensor) -> np.ndarray:
    """Frames (T, H, W, 3) float32 in [0, 1] of latents, decoded the way WanPipeline does."""
    vae = pipe.vae
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean).view(shape).to(latents.device)
    std = torch.tensor(vae.config.latents_std).view(shape).to(latents.device)
    with torch.no_grad():
        video = vae.decode(latents.float() * std + mean, return_dict=False)[0]
    frames = pipe.video_processor.postprocess_video(video, output_type="np")
    return np.asarray(frames[0], dtype=np.float32)


def quality(variant: Variant, reference: Variant) -> tuple[float, float, float]:
    """(PSNR dB, SSIM, latent MSE) of a variant against the dense generation (NaN without decoded frames)."""
    mse = latent_mse(variant.latents, reference.latents)
    if variant.frames is None or reference.frames is None:
        return math.nan, math.nan, mse
    return psnr(variant.frames, reference.frames), ssim(variant.frames, reference.frames), mse


WAN_HEADER = (
    f"{'variant':<12} {'denoise s':>9} {'speedup':>7} {'e2e s':>8} {'e2e x':>6} {'decode s':>8} {'sparsity':>8} "
    f"{'PSNR dB':>8} {'SSIM':>6} {'latent MSE':>10} {'warm-up s':>9} {'compile s':>9}"
)


def wan_line(variant: Variant, dense: Variant, decode_s: float) -> str:
    e2e = variant.run_s + decode_s
    dense_e2e = dense.run_s + decode_s
    value_psnr, value_ssim, mse = quality(variant, dense)
    return (
        f"{variant.name:<12} {variant.run_s:>9.2f} {dense.run_s / variant.run_s:>7.2f} {e2e:>8.2f} "
        f"{dense_e2e / e2e:>6.2f} {variant.decode_s:>8.2f} {variant.sparsity:>8.3f} {value_psnr:>8.2f} "
        f"{value_ssim:>6.3f} {mse:>10.2e} {variant.warmup_s:>9.2f} {variant.compile_s:>9.2f}"
    )


def run_wan(args: argparse.Namespace, device: str, report: Report) -> None:
    """Part (a): the real-width Wan transformer, dense vs each plan."""
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    build_s, pipe = timed(lambda: wan_pipeline(args.blocks, args.vae_dim, device, dtype, args.seed), device)
    cfg = args.guidance > 1.0
    embeds = prompt_embeddings(args.seed, cfg, device, dtype)
    latent = (pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial)
    grid = ((args.frames - 1) // latent[0] + 1, args.height // latent[1] // 2, args.width // latent[1] // 2)
    settings = {
        "height": args.height,
        "width": args.width,
        "num_frames": args.frames,
        "num_inference_steps": args.steps,
        "guidance_scale": args.guidance,
    }
    report(
        f"\n## (a) Wan2.1-T2V-1.3B width, {args.blocks} random blocks, {args.height} x {args.width} x {args.frames} "
        f"frames = {grid[0]} x {grid[1]} x {grid[2]} = {math.prod(grid)} self-attention tokens, {args.steps} steps "
        f"(UniPC flow, shift 3), guidance {args.guidance:g} ({'CFG, 2 forwards per step' if cfg else 'no CFG'}), "
        f"{dtype}; pipeline built in {build_s:.1f} s; tiny AutoencoderKLWan base_dim {args.vae_dim}"
        + ("" if args.decode else " (frames NOT decoded: --no-decode; quality on latents only)")
    )
    variants = [Variant(DENSE, ())] + [Variant(name, PLANS[name]) for name in args.plans]
    warm = {**settings, "num_inference_steps": 1}
    for variant in variants:  # warm-up: one step each (FlexAttention compiles for each new input signature)
        before = FLEX_TIMINGS.compile_s
        variant.warmup_s, _ = timed(denoise_call(pipe, variant, warm, embeds, args.seed, device), device)
        variant.compile_s = FLEX_TIMINGS.compile_s - before
    calls = {v.name: denoise_call(pipe, v, settings, embeds, args.seed, device) for v in variants}
    medians = interleaved(calls, args.repeats, device)
    for variant in variants:
        variant.run_s = medians[variant.name]
        if args.decode:
            variant.decode_s, variant.frames = timed(lambda v=variant: decode(pipe, v.latents.to(device)), device)
    report(
        f"# denoise s: median of {args.repeats} interleaved generations to latents (same seed); e2e: denoise + one "
        "decode (the median decode time of all variants: the same work); sparsity: share of self-attention "
        "entries skipped; warm-up: a one-step generation, FlexAttention "
        "compilation (compile s) included"
    )
    report(WAN_HEADER)
    dense = variants[0]
    # every variant decodes the same latents shape: one decode time (the median) for all, not each one's noise
    decode_s = nan_to_zero(float(np.median([v.decode_s for v in variants])))
    for variant in variants:
        report(wan_line(variant, dense, decode_s))
    for variant in variants:
        for note in variant.notes:
            report(f"# note ({variant.name}): {note}")
    best = max(variants[1:], key=lambda v: dense.run_s / v.run_s, default=None)
    if best is not None:
        speedup = dense.run_s / best.run_s
        with_decode = (dense.run_s + decode_s) / (best.run_s + decode_s)
        verdict = "met" if speedup >= TARGET_SPEEDUP else "NOT met"
        report(
            f"# target (planned >= {TARGET_SPEEDUP}x dense): fastest plan {best.name}: {speedup:.2f}x over the "
            f"denoising loop ({with_decode:.2f}x with one decode), PSNR {quality(best, dense)[0]:.2f} dB: {verdict}"
        )


def nan_to_zero(value: float) -> float:
    return 0.0 if math.isnan(value) else value


def run_tiny(args: argparse.Namespace, device: str, report: Report) -> None:
    """Part (b): the shipped tiny model with its own generation settings, dense vs each plan."""
    from vditscope.adapters.loaded import LoadedPipeline
    from vditscope.adapters.settings import default_prompts

    loaded = LoadedPipeline("tiny-wan", device=device)
    loaded.pipe.set_progress_bar_config(disable=True)
    settings = dict(loaded.settings.get("generation", {}))
    if args.quick:
        settings["num_inference_steps"] = min(4, int(settings.get("num_inference_steps", 4)))
    prompt = default_prompts(loaded.settings)[0]
    report(
        f"\n## (b) shipped tiny model {loaded.model_dir.name} ({loaded.family}, {loaded.self_layers} layers x "
        f"{loaded.heads} heads), prompt {prompt!r}, seed {args.seed}, settings {settings}"
    )
    report(
        f"# {tiny_tokens(loaded.pipe, settings)} self-attention tokens: the times below say nothing about speed at "
        "real sizes; quality is the point"
    )
    variants = [Variant(DENSE, ())] + [Variant(name, PLANS[name]) for name in args.plans]

    def call(variant: Variant) -> Callable[[], None]:
        def run() -> None:
            with plan_context(loaded.pipe, variant) as session:
                variant.frames, variant.latents = loaded.generate(prompt, args.seed, settings)
            if session is not None:
                variant.sparsity = session.totals.sparsity
                variant.notes = list(session.notes)

        return run

    for variant in variants:
        before = FLEX_TIMINGS.compile_s
        variant.warmup_s, _ = timed(call(variant), device)
        variant.compile_s = FLEX_TIMINGS.compile_s - before
    medians = interleaved({v.name: call(v) for v in variants}, max(1, args.repeats), device)
    report(f"{'variant':<12} {'gen s':>7} {'x dense':>7} {'sparsity':>8} {'PSNR dB':>8} {'SSIM':>6} {'latent MSE':>10}")
    dense = variants[0]
    for variant in variants:
        variant.run_s = medians[variant.name]
        value_psnr, value_ssim, mse = quality(variant, dense)
        report(
            f"{variant.name:<12} {variant.run_s:>7.3f} {dense.run_s / variant.run_s:>7.2f} {variant.sparsity:>8.3f} "
            f"{value_psnr:>8.2f} {value_ssim:>6.3f} {mse:>10.2e}"
        )
    for variant in variants:
        for note in variant.notes:
            report(f"# note ({variant.name}): {note}")


def tiny_tokens(pipe: Any, settings: dict[str, Any]) -> int:
    """Self-attention tokens of a Wan pipeline's generation under these settings."""
    temporal, spatial = pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial
    pt, ph, pw = pipe.transformer.config.patch_size
    frames = (int(settings["num_frames"]) - 1) // temporal + 1
    return (frames // pt) * (int(settings["height"]) // spatial // ph) * (int(settings["width"]) // spatial // pw)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=2, help="transformer blocks of the real-width Wan model")
    parser.add_argument("--steps", type=int, default=2, help="denoising steps of the real-width Wan generation")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved timed generations per variant")
    parser.add_argument("--guidance", type=float, default=1.0, help="guidance scale (> 1: CFG, two forwards a step)")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--frames", type=int, default=17, help="video frames (4k + 1)")
    parser.add_argument("--plans", nargs="+", choices=list(PLANS), default=list(PLANS))
    parser.add_argument("--vae-dim", type=int, default=8, help="base_dim of the tiny random AutoencoderKLWan")
    parser.add_argument("--no-decode", dest="decode", action="store_false", help="quality on latents only")
    parser.add_argument("--skip-wan", action="store_true", help="skip part (a), the real-width Wan model")
    parser.add_argument("--skip-tiny", action="store_true", help="skip part (b), the shipped tiny model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--quick", action="store_true", help="a tiny configuration (under a minute): tests the script")
    parser.add_argument("--out", default=None, help="also write the printed table to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.blocks, args.steps, args.repeats, args.height, args.width, args.frames = 1, 2, 1, 128, 208, 9
    if args.repeats < 1 or args.steps < 1 or args.blocks < 1:
        parser.error("--repeats, --steps and --blocks must be at least 1")
    if args.frames % 4 != 1:
        parser.error("--frames must be 4k + 1 (Wan's VAE packs 4 frames per latent frame after the first)")
    if args.height % 16 or args.width % 16:
        parser.error("--height and --width must be multiples of 16")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    with Report(args.out) as report:
        for line in machine_lines(device):
            report(line)
        report(
            "# bench_planned_generation.py: dense vs planned generation (intervene(pipe, edits, fast=True)); plans: "
            + ", ".join(args.plans)
            + (", QUICK configuration" if args.quick else "")
        )
        if not args.skip_wan:
            run_wan(args, device, report)
        if not args.skip_tiny:
            run_tiny(args, device, report)
        report(
            f"\n# FlexAttention over the run: compile {FLEX_TIMINGS.compile_s:.1f} s ({len(FLEX_TIMINGS.signatures)} "
            f"input signatures), {FLEX_TIMINGS.calls} calls, {FLEX_TIMINGS.run_s:.1f} s running"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
