"""Random-weight pipelines with the shapes of a published checkpoint: the closest thing to a real model that
runs without downloading one. The transformer has the published width, heads and text width with fewer
blocks; the text encoder has the real output width but one narrow layer (and the small vocabulary of the
shipped tokenizer); the VAE is the real class at a small width; the scheduler is the one the checkpoint ships.
Saved with ``save_pretrained`` (safetensors), with a vditscope.json of a short generation at the real frame size."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..errors import VditscopeError
from ..progress import ProgressFn
from ..tiny import tiny_model_dir
from .loading import quiet_loading
from .published import PublishedModel, published_model

BUILT = ("wan", "cogvideox")  # families with a real-shaped pipeline builder
SHORT_GENERATION = {"num_inference_steps": 2, "guidance_scale": 5.0}


def real_shaped_transformer(model: PublishedModel, layers: int, seed: int = 0) -> torch.nn.Module:
    """The published transformer with ``layers`` blocks (HunyuanVideo: ``layers`` dual- and single-stream
    blocks each) and seeded random weights, float32, eval mode."""
    import diffusers

    counts = {"num_layers": layers}
    if model.family == "hunyuan_video":
        counts.update(num_single_layers=layers, num_refiner_layers=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = getattr(diffusers, model.transformer_class)(**{**model.transformer, **counts})
    if model.family == "mochi":
        _randomize_zero_init(transformer, seed)
    return transformer.eval()


def _randomize_zero_init(transformer: torch.nn.Module, seed: int) -> None:
    """Mochi's RoPE frequencies start as zeros (they are learned): random values, as a trained model has."""
    g = torch.Generator().manual_seed(seed)
    rope = transformer.rope.pos_frequencies
    rope.data = torch.randn(rope.shape, generator=g) * 0.1


def _text_encoder(model: PublishedModel, vocab_size: int, seed: int) -> torch.nn.Module:
    """One narrow T5/umT5 encoder layer with the published output width (d_model), random weights."""
    import transformers

    encoder = model.text_encoders[0]
    config = getattr(transformers, encoder["config"])(
        vocab_size=vocab_size, d_model=model.text_dim, d_kv=16, d_ff=64, num_layers=1, num_heads=2,
        feed_forward_proj="gated-gelu", relative_attention_num_buckets=8, relative_attention_max_distance=32,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return getattr(transformers, encoder["class"])(config).eval()


def _small_vae(model: PublishedModel, seed: int) -> torch.nn.Module:
    """The published VAE class at a small width with the same latent channels and compression factors."""
    import diffusers

    small: dict[str, dict[str, Any]] = {
        "wan": {"base_dim": 8, "z_dim": 16, "num_res_blocks": 1},
        "cogvideox": {
            "block_out_channels": (8, 8, 8, 8),
            "layers_per_block": 1,
            "norm_num_groups": 4,
            "latent_channels": model.transformer.get("in_channels", 16),
        },
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return getattr(diffusers, model.vae_class)(**small[model.family]).eval()


def _scheduler(model: PublishedModel) -> Any:
    """The scheduler the checkpoint ships (Wan: UniPC with flow sigmas, shift 3 at 480p / 5 at 720p)."""
    import diffusers

    if model.family == "wan":
        return diffusers.UniPCMultistepScheduler(
            prediction_type="flow_prediction",
            use_flow_sigmas=True,
            num_train_timesteps=1000,
            flow_shift=3.0 if model.height <= 480 else 5.0,
        )
    return diffusers.CogVideoXDDIMScheduler(
        timestep_spacing="trailing", snr_shift_scale=1.0 if model.name.endswith("5b") else 3.0
    )


def build_real_shaped(
    name: str,
    out: str | Path,
    layers: int = 2,
    num_frames: int | None = None,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> Path:
    """Write a random-weight pipeline with the shapes of the published model ``name`` to ``out`` (a new or
    empty directory; nothing existing is overwritten) and return it. ``num_frames`` (default: a few) sets the
    generation length in its vditscope.json; height and width are the published ones. ``progress`` hears
    of the two stages (building, saving)."""
    import diffusers
    from transformers import AutoTokenizer

    model = published_model(name)
    if model.family not in BUILT:
        raise VditscopeError(
            f"real-shaped pipelines are built for {', '.join(BUILT)}; for {model.name} use real_shaped_transformer()"
        )
    if layers < 1:
        raise VditscopeError(f"layers must be positive, got {layers}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise VditscopeError(f"{out} exists and is not an empty directory; choose a new one")
    if progress:
        progress(f"building {model.name} with {layers} blocks", 0, 2)
    shipped = tiny_model_dir("tiny-wan" if model.family == "wan" else "tiny-cogvideox")
    tokenizer = AutoTokenizer.from_pretrained(shipped / "tokenizer", local_files_only=True)
    pipe = getattr(diffusers, model.pipeline)(
        tokenizer=tokenizer,
        text_encoder=_text_encoder(model, len(tokenizer), seed + 1),
        vae=_small_vae(model, seed + 2),
        transformer=real_shaped_transformer(model, layers, seed),
        scheduler=_scheduler(model),
    )
    if progress:
        progress(f"saving to {out}", 1, 2)
    frames = num_frames or (5 if model.family == "wan" else 9)
    generation = {"height": model.height, "width": model.width, "num_frames": frames, **SHORT_GENERATION}
    settings = {
        "generation": generation,
        "real_shaped": {"published": model.name, "repo": model.repo, "layers": layers},
    }
    _save_whole(pipe, settings, out)
    if progress:
        progress("done", 2, 2)
    return out


def _save_whole(pipe: Any, settings: dict[str, Any], out: Path) -> None:
    """Save the pipeline and its vditscope.json into a hidden folder beside ``out``, then move them into
    ``out`` (new, or the empty folder it is): a failure leaves no half-written pipeline behind."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        with quiet_loading():
            pipe.save_pretrained(staging, safe_serialization=True)
        (staging / "vditscope.json").write_text(json.dumps(settings, indent=1))
        if out.exists():
            for entry in staging.iterdir():
                entry.rename(out / entry.name)
            staging.rmdir()
        else:
            staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
