"""The small models that ship with vditscope, as directories inside the package.

Video pipelines (diffusers directories, ``SHIPPED_MODELS``): ``tiny-cogvideox-motion`` (the default model;
joint text-video attention with rotary and sincos positions, 9 frames, motion that follows the prompt, spatial
heads), ``tiny-wan`` (video-only self-attention, text by cross-attention, 17 frames; its motion comes from the
noise) and ``tiny-cogvideox`` (joint attention, text first, 17 frames, text-token sinks) were trained on this
project's procedural shapes videos with ``vditscope train-tiny``; each directory holds a ``vditscope.json`` with
its generation settings, caption vocabulary, training configuration and evaluation figures.

Text models (transformers directories, ``TEXT_MODELS``): ``tiny-lm``, a small Llama trained on
Python's pydoc topics (``vditscope.training.tiny_lm``) in which attention sinks on the first
token (``<|bos|>``) have emerged, to compare video sinks with those of a language model offline.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from .data.shapes import DEFAULT_STYLE, LEGACY_STYLE, ClipStyle
from .errors import VditscopeError

ASSETS = Path(__file__).parent / "assets"
SHIPPED_MODELS = ("tiny-wan", "tiny-cogvideox", "tiny-cogvideox-motion")
TEXT_MODELS = ("tiny-lm",)
DEFAULT_MODEL = "tiny-cogvideox-motion"
# per family, the shipped model whose recipe `vditscope train-tiny --family FAMILY` trains unless told otherwise
RECIPE_MODELS = {"cogvideox": "tiny-cogvideox-motion", "wan": "tiny-wan"}
# DEFAULT_MODEL's family: what train-tiny trains without --family
DEFAULT_FAMILY = next(family for family, model in RECIPE_MODELS.items() if model == DEFAULT_MODEL)
# names the command line accepts for the shipped models
MODEL_ALIASES = {"tiny": DEFAULT_MODEL, **{name: name for name in SHIPPED_MODELS + TEXT_MODELS}}


def tiny_model_dir(name: str = DEFAULT_MODEL) -> Path:
    """Directory of a shipped tiny model by name (``tiny`` is the default pipeline, ``DEFAULT_MODEL``).

    Pipelines must hold a ``model_index.json``, text models (``TEXT_MODELS``) a ``config.json``. The shipped
    pipelines' VAE is ``vditscope.models.pixel_vae.PixelShuffleVAE``, which diffusers loads only once imported:
    this imports it, so that ``DiffusionPipeline.from_pretrained(tiny_model_dir())`` works as it is.
    """
    from .models import pixel_vae  # noqa: F401  (here, not at the top: torch and diffusers load with it)

    if name not in MODEL_ALIASES:
        raise VditscopeError(f"unknown shipped model {name}; choose one of {', '.join(MODEL_ALIASES)}")
    path = ASSETS / MODEL_ALIASES[name]
    marker = "config.json" if MODEL_ALIASES[name] in TEXT_MODELS else "model_index.json"
    if not (path / marker).is_file():
        raise VditscopeError(f"the shipped model {name} is missing from {ASSETS} (a broken installation?)")
    return path


@dataclass(frozen=True)
class TinyConfig:
    """Sizes of a tiny model's data and model, and its training recipe (``vditscope train-tiny``)."""

    size: int = 32  # pixels per side (Wan needs a multiple of 16)
    frames: int = 17  # 1 + 2 * 8: 9 latent frames (tiny-cogvideox-motion: 9 frames, one latent frame each)
    spatial_factor: int = 2
    temporal_factor: int = 2
    heads: int = 4
    head_dim: int = 32
    layers: int = 4
    ffn_dim: int = 384
    text_dim: int = 64
    text_layers: int = 2
    max_text_tokens: int = 16
    batch: int = 16
    lr: float = 6e-4
    warmup: int = 100
    shift: float = 3.0  # sigma shift: training and sampling lean towards high noise
    caption_dropout: float = 0.1
    num_inference_steps: int = 20
    guidance_scale: float = 4.0
    seed: int = 0
    family: str = "wan"
    # the clips' style (shapes.ClipStyle; by default shapes.DEFAULT_STYLE): where the motion starts, ...
    start: str = DEFAULT_STYLE.start
    trail: int = DEFAULT_STYLE.trail  # ... the faded copies behind the shape ...
    texture: float = DEFAULT_STYLE.texture  # ... the static background pattern's amplitude ...
    texture_cycles: int = DEFAULT_STYLE.texture_cycles  # ... its highest frequency (cycles per frame) ...
    flicker: float = DEFAULT_STYLE.flicker  # ... how far each frame's brightness moves ...
    drift: bool = DEFAULT_STYLE.drift  # ... whether the pattern moves with the shape ...
    grain: float = DEFAULT_STYLE.grain  # ... the static per-pixel grain's amplitude ...
    scale: float = DEFAULT_STYLE.scale  # ... the shape's size (share of the frame) ...
    travel: float = DEFAULT_STYLE.travel  # ... and how far a centre or wrap clip travels (pixels)
    # CogVideoX: rotary positions on q and k (as CogVideoX-5B) besides the fixed sincos ones added to the tokens
    # (kept, as CogVideoX-5B-I2V keeps them): relative positions for local heads, absolute ones to place a shape
    rotary: bool = False
    direction_sets: bool = False  # batches of clips that differ only in their direction, with the same noise ...
    set_contrast: float = 0.0  # ... and the weight of the loss on what tells a set's members apart
    # learning-rate multiplier of the attention's q and k norms (their gains and biases), whose gains cap how sharp a
    # head's softmax can be (q and k are layer-normed). Tried for issue 17's temporal head: at 10x the gains still
    # reached only 1.4-1.7 and gave none (benchmarks/results/cpu-2core-direction-word.txt); no shipped recipe uses it
    qk_norm_lr_scale: float = 1.0
    # the q and k norms' initial gain: a head's logits are at most gain^2 * sqrt(head_dim) (CogVideoX layer-norms q
    # and k per head, with gains that all heads of a layer share), 5.7 at the usual 1, too flat a softmax for
    # a head that attends to a handful of its 336 keys; the gains then train as any weight does
    qk_norm_gain: float = 1.0

    @classmethod
    def from_saved(cls, saved: dict[str, Any]) -> TinyConfig:
        """The configuration a checkpoint or vditscope.json recorded (keys it does not know are left out); one saved
        before a field existed has that field's earlier value (``SAVED_BEFORE``): the legacy clips
        (``shapes.LEGACY_STYLE``), no rotary positions."""
        known = {f.name for f in fields(cls)}
        return cls(**{**SAVED_BEFORE, **{k: v for k, v in saved.items() if k in known}})

    def with_style(self, style: ClipStyle) -> TinyConfig:
        """This configuration with the clips of ``style`` (a ``shapes.ClipStyle``)."""
        return replace(self, **asdict(style))

    def clip_style(self) -> ClipStyle:
        """The ``shapes.ClipStyle`` of the clips this model trains on."""
        return ClipStyle(**{f.name: getattr(self, f.name) for f in fields(ClipStyle)})

    def generation(self) -> dict[str, Any]:
        return {
            "height": self.size,
            "width": self.size,
            "num_frames": self.frames,
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "max_sequence_length": self.max_text_tokens,
        }


# what a configuration saved before a field existed trained with (TinyConfig.from_saved)
SAVED_BEFORE: dict[str, Any] = {**asdict(LEGACY_STYLE), "rotary": False}
