"""Token counts and transformer sizes of a generation, from a family's configs alone (no weights loaded):
what memory planning (``analyses/memory_plan.py``) needs to know about a model before it loads.

Each family's rules mirror its diffusers pipeline (the VAE's compression factors and how it rounds the frame
count, the text length it pads prompts to, how classifier-free guidance is batched) and its adapter's
``video_grid`` (how latents become a token grid). Nothing here reads a tensor.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from ..errors import VditscopeError
from ..layout import TokenLayout
from . import ADAPTERS
from .base import patch_sizes

# The VAE factors (spatial, temporal) and text length of each family's pipeline when its configs do not
# say: the diffusers pipelines' own fallbacks (Mochi's pipeline fixes 8 and 6 whatever its VAE says).
PIPELINE_FALLBACKS: dict[str, tuple[int, int, int]] = {
    "wan": (8, 4, 512),
    "cogvideox": (8, 4, 226),
    "mochi": (8, 6, 256),
    "hunyuan_video": (8, 4, 256),
    "ltx": (32, 8, 128),
}


@dataclass(frozen=True)
class TransformerSize:
    """What the transformer's config says about its width and depth."""

    layers: int  # video layers (HunyuanVideo: dual- plus single-stream blocks)
    heads: int
    head_dim: int
    ffn: int  # widest per-token intermediate of a block's feed-forward part
    cross_attention: bool  # each layer also attends to the text by cross-attention (Wan, LTX)

    @property
    def hidden(self) -> int:
        return self.heads * self.head_dim


@dataclass(frozen=True)
class TokenCounts:
    """The tokens of one generation's transformer calls."""

    family: str
    grid: tuple[int, int, int]  # video tokens: frames x height x width
    joint_text: int  # text tokens inside the self-attention sequence (0: video-only self-attention)
    cross_text: int  # text keys of the cross-attention calls (0: none)
    frames: int  # frames the pipeline decodes
    branches: int  # classifier-free guidance branches per step (2 with guidance, else 1)
    batch: int  # samples per transformer call (the branches when the family batches them)
    masked: bool  # the self-attention calls carry a key padding mask

    @property
    def video(self) -> int:
        return math.prod(self.grid)

    @property
    def self_tokens(self) -> int:
        return self.video + self.joint_text

    def layout(self) -> TokenLayout:
        """The token layout of a self-attention call, as the family's adapter gives it."""
        layout = ADAPTERS[self.family]().layout(self.grid, self.self_tokens)
        if layout is None:
            raise ValueError(f"no {self.family} layout for the grid {self.grid} and {self.self_tokens} tokens")
        return layout


def config_with_defaults(class_name: str, config: dict[str, Any]) -> dict[str, Any]:
    """A diffusers model config completed with its class's defaults (a published checkpoint's config names
    only what differs); the config as it is when diffusers has no such class."""
    import diffusers

    cls = getattr(diffusers, class_name, None)
    if not isinstance(cls, type):
        return dict(config)
    parameters = inspect.signature(cls.__init__).parameters.values()
    defaults = {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}
    return {**defaults, **config}


def pipeline_default(pipeline_class: str, name: str) -> Any:
    """The default of one argument of a diffusers pipeline's call (None when it has none)."""
    import diffusers

    cls = getattr(diffusers, pipeline_class, None)
    if not isinstance(cls, type):
        return None
    parameter = inspect.signature(cls.__call__).parameters.get(name)
    return None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default


def transformer_size(family: str, config: dict[str, Any]) -> TransformerSize:
    """Depth, heads and feed-forward width of a family's transformer config."""
    heads, head_dim = int(config["num_attention_heads"]), int(config["attention_head_dim"])
    hidden = heads * head_dim
    layers = int(config["num_layers"]) + int(config.get("num_single_layers") or 0)
    if family == "wan":
        ffn = int(config["ffn_dim"])
    elif family == "mochi":  # SwiGLU: the projection is twice the inner width
        ffn = 2 * ((4 * hidden * 2) // 3)
    elif family == "hunyuan_video":  # single-stream blocks project attention and MLP together
        ffn = int(float(config.get("mlp_ratio", 4.0)) * hidden) + hidden
    else:
        ffn = int(config.get("ff_inner_dim") or 4 * hidden)
    return TransformerSize(layers, heads, head_dim, ffn, cross_attention=ADAPTERS[family].text_position is None)


def vae_factors(family: str, vae: dict[str, Any]) -> tuple[int, int]:
    """(spatial, temporal) compression of the VAE as the family's pipeline reads it from the VAE config."""
    spatial, temporal, _ = PIPELINE_FALLBACKS[family]
    if family == "wan":
        return int(vae.get("scale_factor_spatial", spatial)), int(vae.get("scale_factor_temporal", temporal))
    if family == "cogvideox":
        channels = vae.get("block_out_channels")
        spatial = 2 ** (len(channels) - 1) if channels else spatial
        return spatial, int(vae.get("temporal_compression_ratio", temporal))
    if family == "ltx":
        scaling = sum(bool(s) for s in vae.get("spatio_temporal_scaling") or ()) or 3
        spatial = vae.get("spatial_compression_ratio") or int(vae.get("patch_size", 4)) * 2**scaling
        temporal = vae.get("temporal_compression_ratio") or int(vae.get("patch_size_t", 1)) * 2**scaling
        return int(spatial), int(temporal)
    if family == "hunyuan_video":
        return int(vae.get("spatial_compression_ratio", spatial)), int(vae.get("temporal_compression_ratio", temporal))
    return spatial, temporal  # mochi: fixed by its pipeline


def _latent_frames(family: str, num_frames: int, temporal: int, patch_t: int) -> int:
    """Latent frames of a generation as the family's pipeline makes them (Wan rounds to 4k + 1 frames;
    CogVideoX 1.5 pads to whole temporal patches)."""
    if family == "wan" and num_frames % temporal != 1:
        num_frames = num_frames // temporal * temporal + 1
    latent = (max(num_frames, 1) - 1) // temporal + 1
    if family == "cogvideox" and patch_t > 1 and latent % patch_t:
        latent += patch_t - latent % patch_t
    return latent


def check_fixed_size(family: str, transformer: dict[str, Any], spatial: int, generation: dict[str, Any]) -> None:
    """A CogVideoX transformer with stored positions (``use_learned_positional_embeddings``: CogVideoX-5B-I2V,
    tiny-cogvideox-motion) generates only at the size it was built for: a one-line VditscopeError for another one,
    before anything loads (diffusers would raise inside the first transformer call)."""
    if family != "cogvideox" or not transformer.get("use_learned_positional_embeddings"):
        return
    expected = [int(transformer[f"sample_{side}"]) * spatial for side in ("height", "width")]
    if [int(generation["height"]), int(generation["width"])] != expected:
        raise VditscopeError(
            f"this model generates only at {expected[0]} x {expected[1]} px (height x width: its positions are stored "
            f"for that size), not {generation['height']} x {generation['width']}; leave --height and --width out"
        )


def token_counts(
    family: str,
    transformer: dict[str, Any],
    vae: dict[str, Any],
    generation: dict[str, Any],
    text_tokens: int | None = None,
) -> TokenCounts:
    """The tokens of a generation of ``generation``'s size (height, width, num_frames, guidance_scale,
    max_sequence_length) on a model of these configs; ``text_tokens`` is the pipeline's padded text length
    when ``generation`` does not set one."""
    spatial, temporal = vae_factors(family, vae)
    check_fixed_size(family, transformer, spatial, generation)
    pt, ph, pw = patch_sizes(SimpleNamespace(**{"patch_size": 1, **transformer}))
    latent = _latent_frames(family, int(generation["num_frames"]), temporal, pt)
    height, width = int(generation["height"]) // spatial // ph, int(generation["width"]) // spatial // pw
    frames = latent if family == "mochi" else (-(-latent // pt) if family == "cogvideox" else latent // pt)
    text = int(generation.get("max_sequence_length") or text_tokens or PIPELINE_FALLBACKS[family][2])
    if family == "cogvideox":
        text = int(generation.get("max_sequence_length") or transformer.get("max_text_seq_length") or text)
    joint = ADAPTERS[family].text_position is not None
    if family == "hunyuan_video":  # guidance_scale is distilled guidance; true CFG needs true_cfg_scale
        branches = 2 if float(generation.get("true_cfg_scale") or 1.0) > 1.0 else 1
    else:
        branches = 2 if float(generation.get("guidance_scale") or 1.0) > 1.0 else 1
    return TokenCounts(
        family=family,
        grid=(frames, height, width),
        joint_text=text if joint else 0,
        cross_text=0 if joint else text,
        frames=(latent - 1) * temporal + 1,
        branches=branches,
        batch=branches if ADAPTERS[family].cfg_mode == "batched" else 1,
        masked=family == "hunyuan_video",
    )
