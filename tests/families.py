"""Tiny random-weight video diffusion transformers of five diffusers families.

Each ``make_*`` factory builds one diffusers video DiT with two transformer
layers and tiny widths (2 heads x 16 channels), float32 on CPU, in eval mode,
with weights drawn from a seeded generator, together with keyword arguments for
one forward pass, ``case.model(**case.inputs)``, shaped the way the family's
diffusers pipeline calls it.

All cases share the same layout so that layout bugs show:

* batch size :data:`BATCH_SIZE` (2), with a different timestep per element;
* a video token grid of :data:`GRID` = (3 frames, 4 rows, 5 columns) after
  patching (60 video tokens), three distinct sizes;
* :data:`TEXT_LEN` (7) text tokens; families that take a text mask get right
  padding with a different number of valid tokens per batch element.

How the families differ (which the :class:`FamilyCase` fields describe):

* Wan: video-only self-attention (text enters through cross-attention), no text
  mask, tokens flattened (frame, row, column) by a Conv3d patch embedding.
* Mochi: joint attention over ``[video, text]``. Padded text tokens are *dropped*
  per batch element (one attention call per element, of length
  ``60 + valid_text``), so ``text_tokens`` (7) is the padded length. The last
  block is ``context_pre_only``. Its RoPE frequencies are a zero-initialised
  parameter, randomised here. A text attention-pooling call (one query) also
  goes through ``scaled_dot_product_attention``.
* HunyuanVideo: one dual-stream block (separate video/text projections, joint
  ``[video, text]`` attention) and one single-stream block (``[video, text]``
  concatenated before the block); padded text keys are masked with a boolean
  ``(B, 1, 1, N)`` mask. Its token refiner (1 layer) runs a text-only
  self-attention before the transformer blocks, which is not counted in
  ``num_self_attn_layers``.
* CogVideoX: joint attention over ``[text, video]`` (text first), no text mask;
  hidden states come in as ``(B, F, C, H, W)`` (frames before channels) and the
  3D RoPE is passed in as ``image_rotary_emb``, computed as the pipeline does.
* LTX-Video: video-only self-attention over packed latents ``(B, N, C)`` with
  patch size 1, RoPE computed from ``num_frames``/``height``/``width`` and
  ``rope_interpolation_scale``; the text mask is used by cross-attention only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import (
    CogVideoXTransformer3DModel,
    HunyuanVideoTransformer3DModel,
    LTXVideoTransformer3DModel,
    MochiTransformer3DModel,
    WanTransformer3DModel,
)
from diffusers.models.embeddings import get_3d_rotary_pos_embed

__all__ = [
    "ALL_FAMILIES",
    "BATCH_SIZE",
    "GRID",
    "TEXT_LEN",
    "FamilyCase",
    "make_cogvideox",
    "make_hunyuan_video",
    "make_ltx",
    "make_mochi",
    "make_wan",
    "make_wan_i2v",
    "tiny_cogvideox_1_5",
    "tiny_wan",
]

#: Batch size of every case.
BATCH_SIZE = 2
#: Video token grid (frames, height, width) after patching, shared by all cases.
GRID: tuple[int, int, int] = (3, 4, 5)
#: Number of text tokens (including padding) of every case.
TEXT_LEN = 7
#: Valid (unpadded) text tokens per batch element where a family takes a mask.
VALID_TEXT_LENGTHS: tuple[int, ...] = (5, 3)

_HEADS = 2
_HEAD_DIM = 16
_INNER_DIM = _HEADS * _HEAD_DIM
_LATENT_CHANNELS = 4
_TEXT_DIM = 16
_SPATIAL_PATCH = 2
# One timestep per batch element, different so that batch mix-ups show.
_TIMESTEPS = (700.0, 300.0)
# Constructor arguments every family shares: 2 heads x 16 channels, 4 latent channels in and out.
_HEADS_AND_CHANNELS: dict[str, Any] = dict(
    num_attention_heads=_HEADS, attention_head_dim=_HEAD_DIM, in_channels=_LATENT_CHANNELS
)


@dataclass
class FamilyCase:
    """A tiny model of one family plus the inputs of one forward pass.

    Attributes:
        name: Family name (``"wan"``, ``"mochi"``, ``"hunyuan_video"``,
            ``"cogvideox"``, ``"ltx"``).
        model: The transformer, float32, CPU, eval mode.
        inputs: Keyword arguments for ``model(**inputs)``.
        grid: (frames, height, width) of the video tokens after patching, in the
            order the model flattens them into its token sequence.
        text_tokens: Number of text tokens inside the joint self-attention
            calls (the padded length), 0 when self-attention is video-only.
        text_first: True when joint attention orders tokens ``[text, video]``,
            False for ``[video, text]`` (or video only).
        num_self_attn_layers: Number of transformer layers with a video
            self-attention.
    """

    name: str
    model: torch.nn.Module
    inputs: dict[str, Any]
    grid: tuple[int, int, int]
    text_tokens: int
    text_first: bool
    num_self_attn_layers: int

    @property
    def video_tokens(self) -> int:
        """Number of video tokens, ``frames * height * width`` of :attr:`grid`."""
        frames, height, width = self.grid
        return frames * height * width


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU RNG inside the block, restoring the previous state after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _generator(seed: int) -> torch.Generator:
    # Inputs use a stream separate from the weights.
    return torch.Generator().manual_seed(10_000 + seed)


def _randn(generator: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=generator)


def _timesteps() -> torch.Tensor:
    return torch.tensor(_TIMESTEPS, dtype=torch.float32)


def _text_mask() -> torch.Tensor:
    """Right-padded (B, TEXT_LEN) boolean mask with :data:`VALID_TEXT_LENGTHS`."""
    positions = torch.arange(TEXT_LEN)
    return torch.stack([positions < valid for valid in VALID_TEXT_LENGTHS])


def _latent_shape() -> tuple[int, int, int]:
    """(frames, height, width) of latents that patch (1, 2, 2) into :data:`GRID`."""
    frames, height, width = GRID
    return frames, height * _SPATIAL_PATCH, width * _SPATIAL_PATCH


def _video_inputs(generator: torch.Generator, **extra: Any) -> dict[str, Any]:
    """Latents (B, C, F, H, W), one timestep per element and text embeddings, drawn in that order."""
    return dict(
        hidden_states=_randn(generator, BATCH_SIZE, _LATENT_CHANNELS, *_latent_shape()),
        timestep=_timesteps(),
        encoder_hidden_states=_randn(generator, BATCH_SIZE, TEXT_LEN, _TEXT_DIM),
        **extra,
    )


def _finish(model: torch.nn.Module) -> torch.nn.Module:
    # Built on CPU in float32 already; casting with .to() would only make
    # diffusers warn about modules it keeps in float32.
    return model.eval()


def make_wan(seed: int = 0) -> FamilyCase:
    """Tiny ``WanTransformer3DModel``: 2 layers, patch (1, 2, 2), video-only self-attention.

    Inputs: ``hidden_states`` (B, C, F, H, W), ``timestep`` (B,),
    ``encoder_hidden_states`` (B, 7, 16), no mask (the Wan pipeline zeroes the
    padded text embeddings instead).
    """
    inputs = _video_inputs(_generator(seed))
    return FamilyCase("wan", tiny_wan(seed), inputs, GRID, 0, False, 2)


def make_mochi(seed: int = 0) -> FamilyCase:
    """Tiny ``MochiTransformer3DModel``: 2 layers, spatial patch 2, joint ``[video, text]`` attention.

    ``pos_frequencies`` (zero-initialised, which would make RoPE the identity)
    is drawn from N(0, 0.5^2). Inputs: ``hidden_states`` (B, C, F, H, W),
    ``encoder_hidden_states`` (B, 7, 16), ``timestep`` (B,) and a boolean
    right-padded ``encoder_attention_mask`` with 5 and 3 valid tokens.
    """
    with _seeded(seed):
        model = MochiTransformer3DModel(
            **_HEADS_AND_CHANNELS,
            patch_size=_SPATIAL_PATCH,
            num_layers=2,
            pooled_projection_dim=16,
            text_embed_dim=_TEXT_DIM,  # the caption attention pool uses 8 heads
            time_embed_dim=16,
            max_sequence_length=TEXT_LEN,
        )
        with torch.no_grad():
            model.pos_frequencies.normal_(0.0, 0.5)
    inputs = _video_inputs(_generator(seed), encoder_attention_mask=_text_mask())
    return FamilyCase("mochi", _finish(model), inputs, GRID, TEXT_LEN, False, 2)


def make_hunyuan_video(seed: int = 0) -> FamilyCase:
    """Tiny ``HunyuanVideoTransformer3DModel``: 1 dual-stream + 1 single-stream block.

    Token refiner with 1 layer, guidance embedding on, RoPE axes (4, 6, 6).
    Inputs: ``hidden_states`` (B, C, F, H, W), ``timestep`` (B,),
    ``encoder_hidden_states`` (B, 7, 16), a float right-padded
    ``encoder_attention_mask`` (5 and 3 valid tokens; the pipeline casts it to
    the transformer dtype), ``pooled_projections`` (B, 8) and ``guidance``
    (B,) = guidance scale 6 x 1000, as the pipeline passes it.
    """
    with _seeded(seed):
        model = HunyuanVideoTransformer3DModel(
            **_HEADS_AND_CHANNELS,
            out_channels=_LATENT_CHANNELS,
            num_layers=1,
            num_single_layers=1,
            num_refiner_layers=1,
            mlp_ratio=2.0,
            patch_size=_SPATIAL_PATCH,
            patch_size_t=1,
            qk_norm="rms_norm",
            guidance_embeds=True,
            text_embed_dim=_TEXT_DIM,
            pooled_projection_dim=8,
            rope_axes_dim=(4, 6, 6),
        )
    g = _generator(seed)
    inputs = _video_inputs(g, encoder_attention_mask=_text_mask().to(torch.float32))
    # drawn after the video inputs, from the same stream
    inputs.update(pooled_projections=_randn(g, BATCH_SIZE, 8), guidance=torch.full((BATCH_SIZE,), 6.0 * 1000.0))
    return FamilyCase("hunyuan_video", _finish(model), inputs, GRID, TEXT_LEN, False, 2)


def _cogvideox_rotary_emb(model: CogVideoXTransformer3DModel) -> tuple[torch.Tensor, torch.Tensor]:
    """3D RoPE as ``CogVideoXPipeline._prepare_rotary_positional_embeddings`` (CogVideoX 1.0) builds it."""
    # Imported here: the pipeline module pulls in the text-encoder stack.
    from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

    config = model.config
    frames, grid_height, grid_width = GRID
    base_width = config.sample_width // config.patch_size
    base_height = config.sample_height // config.patch_size
    crops_coords = get_resize_crop_region_for_grid((grid_height, grid_width), base_width, base_height)
    return get_3d_rotary_pos_embed(
        embed_dim=config.attention_head_dim,
        crops_coords=crops_coords,
        grid_size=(grid_height, grid_width),
        temporal_size=frames,
        device=torch.device("cpu"),
    )


def make_cogvideox(seed: int = 0) -> FamilyCase:
    """Tiny ``CogVideoXTransformer3DModel`` (1.0 style): 2 layers, spatial patch 2, RoPE.

    Joint attention is ``[text, video]``. Inputs: ``hidden_states``
    (B, F, C, H, W) -- frames before channels --, ``encoder_hidden_states``
    (B, 7, 16), integer ``timestep`` (B,) and ``image_rotary_emb`` (cos, sin),
    each (F*H*W, head_dim).
    """
    frames, height, width = _latent_shape()
    with _seeded(seed):
        model = CogVideoXTransformer3DModel(
            **_HEADS_AND_CHANNELS,
            out_channels=_LATENT_CHANNELS,
            time_embed_dim=16,
            text_embed_dim=_TEXT_DIM,
            num_layers=2,
            sample_width=width,
            sample_height=height,
            sample_frames=4 * (frames - 1) + 1,
            patch_size=_SPATIAL_PATCH,
            max_text_seq_length=TEXT_LEN,
            use_rotary_positional_embeddings=True,
        )
    g = _generator(seed)
    inputs = dict(
        hidden_states=_randn(g, BATCH_SIZE, frames, _LATENT_CHANNELS, height, width),
        encoder_hidden_states=_randn(g, BATCH_SIZE, TEXT_LEN, _TEXT_DIM),
        timestep=_timesteps().long(),
        image_rotary_emb=_cogvideox_rotary_emb(model),
    )
    return FamilyCase("cogvideox", _finish(model), inputs, GRID, TEXT_LEN, True, 2)


def make_ltx(seed: int = 0) -> FamilyCase:
    """Tiny ``LTXVideoTransformer3DModel``: 2 layers, patch size 1, video-only self-attention.

    Inputs follow ``LTXPipeline``: packed latents ``hidden_states`` (B, F*H*W, C)
    in (frame, row, column) order, ``encoder_hidden_states`` (B, 7, 16),
    ``timestep`` (B,), a boolean right-padded ``encoder_attention_mask`` (5 and
    3 valid tokens; cross-attention only), the latent ``num_frames``,
    ``height``, ``width`` and ``rope_interpolation_scale`` = (8 / 25 fps, 32, 32)
    (LTX VAE compression over frame rate, spatial compression).
    """
    frames, height, width = GRID
    with _seeded(seed):
        model = LTXVideoTransformer3DModel(
            **_HEADS_AND_CHANNELS,
            out_channels=_LATENT_CHANNELS,
            patch_size=1,
            patch_size_t=1,
            cross_attention_dim=_INNER_DIM,  # captions are projected to the inner dim first
            num_layers=2,
            caption_channels=_TEXT_DIM,
        )
    g = _generator(seed)
    inputs = dict(
        hidden_states=_randn(g, BATCH_SIZE, frames * height * width, _LATENT_CHANNELS),
        encoder_hidden_states=_randn(g, BATCH_SIZE, TEXT_LEN, _TEXT_DIM),
        timestep=_timesteps(),
        encoder_attention_mask=_text_mask(),
        num_frames=frames,
        height=height,
        width=width,
        rope_interpolation_scale=(8 / 25.0, 32, 32),
    )
    return FamilyCase("ltx", _finish(model), inputs, GRID, 0, False, 2)


#: Image tokens of :func:`make_wan_i2v` (CLIP image embeddings; 257 in Wan 2.1 I2V).
IMAGE_LEN = 5
#: Text tokens a Wan I2V attention processor expects after the image tokens (hard-coded 512 in diffusers).
WAN_I2V_TEXT_LEN = 512
_IMAGE_DIM = 24


def tiny_wan(seed: int = 0, **overrides: Any) -> WanTransformer3DModel:
    """A ``WanTransformer3DModel`` as :func:`make_wan` builds it (2 layers, 2 heads x 16, text dim 16),
    with constructor ``overrides`` (``in_channels``, ``image_dim``, ...), float32, eval mode."""
    config: dict[str, Any] = dict(
        _HEADS_AND_CHANNELS,
        patch_size=(1, _SPATIAL_PATCH, _SPATIAL_PATCH),
        text_dim=_TEXT_DIM,
        freq_dim=32,
        ffn_dim=64,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )
    config.update(overrides)
    config.setdefault("out_channels", config["in_channels"])
    with _seeded(seed):
        return _finish(WanTransformer3DModel(**config))


def make_wan_i2v(seed: int = 0) -> FamilyCase:
    """Tiny Wan 2.1-style image-to-video ``WanTransformer3DModel``: CLIP image tokens (``image_dim``) that
    attn2 attends to in a call of its own (added key/value projections) before the text call.

    Inputs as :func:`make_wan`, but ``encoder_hidden_states`` (B, 512, 16) (the processor takes the last
    512 tokens as text) and ``encoder_hidden_states_image`` (B, :data:`IMAGE_LEN`, 24).
    """
    model = tiny_wan(seed, image_dim=_IMAGE_DIM, added_kv_proj_dim=_INNER_DIM)
    g = _generator(seed)
    inputs = dict(
        hidden_states=_randn(g, BATCH_SIZE, _LATENT_CHANNELS, *_latent_shape()),
        timestep=_timesteps(),
        encoder_hidden_states=_randn(g, BATCH_SIZE, WAN_I2V_TEXT_LEN, _TEXT_DIM),
        encoder_hidden_states_image=_randn(g, BATCH_SIZE, IMAGE_LEN, _IMAGE_DIM),
    )
    return FamilyCase("wan", model, inputs, GRID, 0, False, 2)


def tiny_cogvideox_1_5(seed: int = 0, **overrides: Any) -> CogVideoXTransformer3DModel:
    """A CogVideoX 1.5-style (text-to-video) ``CogVideoXTransformer3DModel``: temporal patch 2
    (``patch_size_t``), spatial patch 2, 3D RoPE, no learned positions, no patch bias, no ``ofs``
    embedding (only 1.5 I2V has one); 2 layers, 2 heads x 16, text dim 16, with constructor ``overrides``
    (``in_channels``, ``sample_height``, ...)."""
    config: dict[str, Any] = dict(
        _HEADS_AND_CHANNELS,
        time_embed_dim=16,
        text_embed_dim=_TEXT_DIM,
        num_layers=2,
        patch_size=_SPATIAL_PATCH,
        patch_size_t=2,
        patch_bias=False,
        max_text_seq_length=TEXT_LEN,
        use_rotary_positional_embeddings=True,
        use_learned_positional_embeddings=False,
        ofs_embed_dim=None,
    )
    config.update(overrides)
    config.setdefault("out_channels", config["in_channels"])
    with _seeded(seed):
        return _finish(CogVideoXTransformer3DModel(**config))


#: All factories, in a fixed order.
ALL_FAMILIES: list[Callable[..., FamilyCase]] = [
    make_wan,
    make_mochi,
    make_hunyuan_video,
    make_cogvideox,
    make_ltx,
]
