"""Issue 17's experiments on the shipped shapes models: does the direction word steer the motion?

Six subcommands, each printing one JSON line per result (run one at a time on this 2-core machine; give a
background run OMP_NUM_THREADS=1):

    finetune OUT [--lo 0.5 --hi 1.0 --steps 1500 --lr 3e-4 --every 300]
        fine-tune the shipped tiny-wan with noise levels drawn uniformly in [lo, hi] (its own batches of 16),
        reporting caption sensitivity and the direction of 16 held-out clips every ``every`` steps
    train OUT [--family wan|cogvideox --frames 17 --temporal-factor 2 --steps 4000 --threads 1 --clips STYLE
               --start S --trail N --texture A --texture-cycles C --flicker F --drift --grain G --scale K --travel P
               --shift S --direction-sets --set-contrast W --qk-norm-lr-scale M --qk-norm-gain G]
        train tiny-wan (or its CogVideoX counterpart) from scratch with `vditscope train-tiny`'s recipe and loop at
        another clip length, temporal factor or clip style (shapes.ClipStyle; resumable, checkpoints every 250 steps)
    evaluate RUN_OR_MODEL [--count 24 --guidance 4 --shift S]
        caption sensitivity and generated colour/direction on ``count`` held-out clips of a train-tiny run
        directory, of a finetune output, or of the shipped model ("tiny-wan"); either family
    steer RUN_OR_MODEL [--count 8]
        each of ``count`` held-out clips generated once per direction word with the same seed: how often the
        motion follows the word, and how often all four words give the same motion (the noise decides it)
    shared RUN_OR_MODEL [--clips 16 --sigmas 0.1 0.2 0.4 0.6 0.8]
        the loss at fixed noise levels on held-out clips with no grain, a static grain and a grain redrawn every
        frame: how much the model reads a pixel's grain from the other frames (what a temporal head would do)
    bands RUN_OR_MODEL [--clips 16 --sigmas 0.2 0.4 0.6 0.8 0.95]
        the loss's relative rise when the caption names the opposite direction, at each fixed noise level:
        where in the noise range a model reads the direction word (Wan: flow matching at noise level sigma;
        CogVideoX: its DDIM noising at timestep sigma * 999)

The figures in issue 17's notes came from these commands; the clip-style runs were
`train OUT --clips centre` (4,000 steps) and `train OUT --clips wrap --steps 3000`, each on one thread
beside the other, then `evaluate OUT --count 40`; the runs of benchmarks/results/cpu-2core-direction-word.txt are
listed at its top (`bands` on their checkpoints, `vditscope eval-tiny` on the one that ran to its end).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from vditscope.adapters.loading import load_pipeline
from vditscope.data import shapes
from vditscope.tiny import TinyConfig, tiny_model_dir
from vditscope.training.evaluate import OPPOSITE, caption_sensitivity
from vditscope.training.objectives import encode_prompts
from vditscope.training.recipes import recipe_for
from vditscope.training.tiny import load_trained_pipeline, make_batch, rendered_batch, train

PROMPT_SEED_OFFSET = 100_000  # fine-tuning batches come from steps the shipped model's training never drew


def shipped() -> tuple:
    """The shipped tiny-wan pipeline, its generation settings and training configuration."""
    pipe, _, directory = load_pipeline(tiny_model_dir("tiny-wan"))
    pipe.set_progress_bar_config(disable=True)
    settings = json.loads((Path(directory) / "vditscope.json").read_text())
    return pipe, settings["generation"], TinyConfig.from_saved(settings["training"])


def generated_directions(pipe, generation: dict, count: int) -> dict:
    """Colour and direction accuracy of ``count`` held-out clips (seed i for the i-th), and the confusion."""
    _, held = shapes.split_specs(0)
    direction = colour = 0
    confusion: dict[str, list[str]] = {}
    for i, spec in enumerate(held[:count]):
        frames = pipe(prompt=spec.caption, generator=torch.Generator().manual_seed(i), output_type="np", **generation)
        measured = shapes.measure_clip(np.asarray(frames.frames[0], dtype=np.float32), spec.background)
        direction += measured.direction == spec.direction
        colour += measured.color == spec.color
        confusion.setdefault(spec.direction, []).append(measured.direction)
    return {"direction": direction / count, "colour": colour / count, "confusion": confusion}


def finetune(args: argparse.Namespace) -> None:
    pipe, generation, config = shipped()
    recipe = recipe_for("wan")
    train_specs, _ = shapes.split_specs(config.seed)
    params = [p for module in (pipe.transformer, pipe.text_encoder) for p in module.parameters()]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    def report(step: int) -> None:
        for module in (pipe.transformer, pipe.text_encoder):
            module.eval()
        sensitivity = caption_sensitivity(pipe, "wan", generation, shift=config.shift, style=config.clip_style())
        clips = generated_directions(pipe, generation, 16)
        print(
            json.dumps(
                {"step": step, "sensitivity": sensitivity, **clips, "seconds": round(time.perf_counter() - started)}
            ),
            flush=True,
        )
        torch.save(pipe.transformer.state_dict(), out / "transformer.pt")
        torch.save(pipe.text_encoder.state_dict(), out / "text_encoder.pt")
        for module in (pipe.transformer, pipe.text_encoder):
            module.train()

    report(0)
    for step in range(1, args.steps + 1):
        videos, captions = make_batch(config, PROMPT_SEED_OFFSET + step, train_specs)
        with torch.no_grad():
            latents = recipe.model_latents(pipe, pipe.vae.encode(videos).latent_dist.sample())
        embeds, _ = pipe.encode_prompt(captions, do_classifier_free_guidance=False, max_sequence_length=16,
                                       device=torch.device("cpu"))  # fmt: skip
        generator = torch.Generator().manual_seed(step)
        sigma = args.lo + (args.hi - args.lo) * torch.rand(latents.shape[0], generator=generator)
        batch = recipe.noised_at(pipe, latents, sigma, torch.randn(latents.shape, generator=generator))
        prediction = pipe.transformer(**recipe.transformer_kwargs(pipe, batch, embeds), return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(prediction.float(), batch.target.float())
        for group in optimizer.param_groups:
            group["lr"] = args.lr * min(1.0, step / 50)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if step % args.every == 0:
            report(step)


def train_variant(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    style = shapes.CLIP_STYLES[args.clips]
    overrides = {name: getattr(args, name) for name in asdict(style) if getattr(args, name) is not None}
    sizes = {"frames": args.frames, "temporal_factor": args.temporal_factor}
    sets = {"direction_sets": args.direction_sets or args.set_contrast > 0, "set_contrast": args.set_contrast}
    settings = {**sizes, **sets, "shift": args.shift, "family": args.family, "rotary": args.rotary,
                "qk_norm_lr_scale": args.qk_norm_lr_scale, "qk_norm_gain": args.qk_norm_gain}  # fmt: skip
    config = TinyConfig(**settings).with_style(replace(style, **overrides))
    started = time.perf_counter()

    def progress(step: int, total: int, loss: float) -> None:
        if step % 100 == 0:
            print(
                json.dumps({"step": step, "loss": round(loss, 4), "seconds": round(time.perf_counter() - started)}),
                flush=True,
            )

    train(Path(args.out), config, steps=args.steps, checkpoint_every=250, progress=progress)


def loaded(model: str) -> tuple:
    """The pipeline, generation settings and training configuration of the shipped model ("tiny-wan"), of a
    pipeline directory (exported or shipped), of a finetune output or of a train-tiny run directory."""
    source = Path(model)
    if model == "tiny-wan":
        return shipped()
    if (source / "vditscope.json").is_file():  # an exported or shipped pipeline directory
        pipe, _, directory = load_pipeline(source)
        pipe.set_progress_bar_config(disable=True)
        config = TinyConfig.from_saved(json.loads((Path(directory) / "vditscope.json").read_text())["training"])
        return pipe, config.generation(), config
    if (source / "transformer.pt").is_file():  # a finetune output
        pipe, generation, config = shipped()
        pipe.transformer.load_state_dict(torch.load(source / "transformer.pt"))
        pipe.text_encoder.load_state_dict(torch.load(source / "text_encoder.pt"))
        return pipe, generation, config
    pipe, config = load_trained_pipeline(source)  # a train-tiny run directory
    pipe.set_progress_bar_config(disable=True)
    return pipe, config.generation(), config


def evaluate(args: argparse.Namespace) -> None:
    pipe, generation, config = loaded(args.model)
    generation = {**generation, "guidance_scale": args.guidance}
    shift = args.shift if args.shift is not None else config.shift
    sensitivity = caption_sensitivity(pipe, config.family, generation, shift=shift, style=config.clip_style())
    print(
        json.dumps(
            {"model": args.model, "sensitivity": sensitivity, **generated_directions(pipe, generation, args.count)}
        )
    )


def steer(args: argparse.Namespace) -> None:
    """Generate each of ``count`` held-out clips (seed i for the i-th) once per direction word, same seed: does the
    word change the motion, or does the seed's noise decide it?"""
    pipe, generation, _ = loaded(args.model)
    _, held = shapes.split_specs(0)
    follows = unchanged = 0
    for i, spec in enumerate(held[: args.count]):
        measured = {}
        for direction in shapes.DIRECTIONS:
            prompt = replace(spec, direction=direction).caption
            video = pipe(prompt=prompt, generator=torch.Generator().manual_seed(i), output_type="np", **generation)
            clip = np.asarray(video.frames[0], np.float32)
            measured[direction] = shapes.measure_clip(clip, spec.background).direction
        follows += sum(measured[d] == d for d in measured)
        unchanged += len(set(measured.values())) == 1
        print(json.dumps({"seed": i, "measured_per_word": measured}), flush=True)
    words = len(shapes.DIRECTIONS) * args.count
    summary = {"follows_the_word": follows / words, "same_motion_for_all_four_words": unchanged / args.count}
    print(json.dumps({"model": args.model, "step": trained_steps(args.model), "clips": args.count, **summary}))


def loss_at(pipe, recipe, latents: torch.Tensor, embeds: torch.Tensor, sigma: float) -> float:
    """The denoising loss of latents noised at the fixed level ``sigma``, with noise seeded by that level (the same
    noise for every caption and clip set at that level)."""
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(round(sigma * 1000)))
    batch = recipe.noised_at(pipe, latents, torch.full((latents.shape[0],), sigma), noise)
    prediction = pipe.transformer(**recipe.transformer_kwargs(pipe, batch, embeds), return_dict=False)[0]
    return float(torch.nn.functional.mse_loss(prediction, batch.target))


@torch.no_grad()
def bands(args: argparse.Namespace) -> None:
    """Caption sensitivity to the direction word at fixed noise levels: where in the noise range the model reads it."""
    pipe, _, config = loaded(args.model)
    recipe = recipe_for(config.family)
    _, held = shapes.split_specs(0)
    specs = held[: args.clips]
    rng = np.random.default_rng(0)
    videos = rendered_batch(specs, config.frames, config.size, rng, config.clip_style())
    latents = recipe.model_latents(pipe, pipe.vae.encode(videos).latent_dist.sample())
    true = encode_prompts(pipe, [s.caption for s in specs], "cpu", config.max_text_tokens)
    flipped = [replace(s, direction=OPPOSITE[s.direction]).caption for s in specs]
    opposite = encode_prompts(pipe, flipped, "cpu", config.max_text_tokens)
    rises = {}
    for sigma in args.sigmas:
        losses = [loss_at(pipe, recipe, latents, embeds, sigma) for embeds in (true, opposite)]
        rises[str(sigma)] = round(losses[1] / losses[0] - 1, 5)
    print(json.dumps({"model": args.model, "step": trained_steps(args.model), "direction_sensitivity_at_sigma": rises}))


@torch.no_grad()
def shared(args: argparse.Namespace) -> None:
    """The loss at fixed noise levels on rendered held-out clips with no grain, with a static grain (every frame
    shares it) and with a grain redrawn every frame, both of the model's amplitude (0.12 when it has none): how much
    the model reads a pixel's grain from the other frames, as a temporal head does."""
    pipe, _, config = loaded(args.model)
    recipe = recipe_for(config.family)
    _, held = shapes.split_specs(0)
    specs = held[: args.clips]
    embeds = encode_prompts(pipe, [s.caption for s in specs], "cpu", config.max_text_tokens)
    plain = rendered_batch(
        specs, config.frames, config.size, np.random.default_rng(0), replace(config.clip_style(), grain=0.0)
    )
    batch_size, _, frames, height, width = plain.shape
    amplitude = 2 * (config.grain or 0.12)  # pixels in [0, 1] -> the VAE's [-1, 1]
    generator = torch.Generator().manual_seed(5)
    static = (torch.rand(batch_size, 1, 1, height, width, generator=generator) * 2 - 1) * amplitude
    redrawn = (torch.rand(batch_size, 1, frames, height, width, generator=generator) * 2 - 1) * amplitude
    for name, videos in (("none", plain), ("static", plain + static), ("per-frame", plain + redrawn)):
        latents = recipe.model_latents(pipe, pipe.vae.encode(videos).latent_dist.sample())
        losses = {str(sigma): round(loss_at(pipe, recipe, latents, embeds, sigma), 5) for sigma in args.sigmas}
        print(json.dumps({"model": args.model, "grain": name, "loss_at_sigma": losses}))


def trained_steps(model: str) -> int | None:
    """How far a train-tiny run directory trained (None for the shipped model or a finetune output)."""
    state = Path(model) / "state.json"
    return json.loads(state.read_text())["step"] if state.is_file() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    tune = sub.add_parser("finetune")
    tune.add_argument("out")
    tune.add_argument("--lo", type=float, default=0.5)
    tune.add_argument("--hi", type=float, default=1.0)
    tune.add_argument("--steps", type=int, default=1500)
    tune.add_argument("--lr", type=float, default=3e-4)
    tune.add_argument("--every", type=int, default=300)
    variant = sub.add_parser("train")
    variant.add_argument("out")
    variant.add_argument("--frames", type=int, default=17)
    variant.add_argument("--temporal-factor", type=int, default=2)
    variant.add_argument("--steps", type=int, default=4000)
    variant.add_argument("--threads", type=int, default=1)
    variant.add_argument("--family", default="wan", choices=["wan", "cogvideox"])
    variant.add_argument("--clips", default="edge", choices=list(shapes.CLIP_STYLES))
    variant.add_argument("--start", choices=shapes.STARTS)  # each overrides the --clips style's
    variant.add_argument("--trail", type=int)
    variant.add_argument("--texture", type=float)
    variant.add_argument("--texture-cycles", type=int)
    variant.add_argument("--flicker", type=float)
    variant.add_argument("--drift", action=argparse.BooleanOptionalAction, default=None)
    variant.add_argument("--grain", type=float)
    variant.add_argument("--scale", type=float)
    variant.add_argument("--travel", type=float)
    variant.add_argument("--rotary", action="store_true")  # CogVideoX: rotary positions besides the sincos ones
    variant.add_argument("--shift", type=float, default=3.0)  # the noise-level shift of training and sampling
    variant.add_argument("--direction-sets", action="store_true")  # clips that differ only in direction, same noise
    variant.add_argument("--set-contrast", type=float, default=0.0)  # weight of the loss on the sets' differences
    variant.add_argument("--qk-norm-lr-scale", type=float, default=1.0)  # learning-rate multiple of the q/k norms
    variant.add_argument("--qk-norm-gain", type=float, default=1.0)  # the q/k norms' initial gain
    score = sub.add_parser("evaluate")
    score.add_argument("model")
    score.add_argument("--count", type=int, default=24)
    score.add_argument("--guidance", type=float, default=4.0)
    score.add_argument("--shift", type=float)  # noise-level shift of the sensitivity (default: the model's)
    swap = sub.add_parser("steer")
    swap.add_argument("model")
    swap.add_argument("--count", type=int, default=8)
    band = sub.add_parser("bands")
    band.add_argument("model")
    band.add_argument("--clips", type=int, default=16)
    band.add_argument("--sigmas", type=float, nargs="+", default=[0.2, 0.4, 0.6, 0.8, 0.95])
    grain = sub.add_parser("shared")
    grain.add_argument("model")
    grain.add_argument("--clips", type=int, default=16)
    grain.add_argument("--sigmas", type=float, nargs="+", default=[0.1, 0.2, 0.4, 0.6, 0.8])
    args = parser.parse_args()
    commands = {"finetune": finetune, "train": train_variant, "evaluate": evaluate, "steer": steer, "bands": bands,
                "shared": shared}  # fmt: skip
    commands[args.command](args)


if __name__ == "__main__":
    main()
