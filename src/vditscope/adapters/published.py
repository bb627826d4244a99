"""Facts about the published checkpoints of each family (configs, default video size, text length), so that
vditscope can plan for a real model that is not on disk: estimate its memory and build a random-weight
pipeline of its real shapes (``real_shaped``). Parameter counts come from instantiating the configs on the
meta device (exact, no memory, no download)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch

from ..errors import VditscopeError

# the umT5-XXL / T5-v1.1-XXL encoders (Wan; CogVideoX, Mochi, LTX-Video): what the pipelines load as text_encoder
_T5_XXL: dict[str, Any] = {
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "feed_forward_proj": "gated-gelu",
}
UMT5_XXL = {"class": "UMT5EncoderModel", "config": "UMT5Config", "vocab_size": 256384, **_T5_XXL}
T5_XXL = {"class": "T5EncoderModel", "config": "T5Config", "vocab_size": 32128, **_T5_XXL}
# HunyuanVideo's text encoders: the Llama part of llava-llama-3-8b and CLIP ViT-L/14's text tower
LLAMA_3_8B = {
    "class": "LlamaModel",
    "config": "LlamaConfig",
    "vocab_size": 128320,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
}
CLIP_L_TEXT = {
    "class": "CLIPTextModel",
    "config": "CLIPTextConfig",
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "projection_dim": 768,
}

_WAN_SMALL: dict[str, Any] = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 12,
    "attention_head_dim": 128,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 4096,
    "freq_dim": 256,
    "ffn_dim": 8960,
    "num_layers": 30,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "rope_max_seq_len": 1024,
}
_WAN_LARGE = {**_WAN_SMALL, "num_attention_heads": 40, "ffn_dim": 13824, "num_layers": 40}
_COGVIDEOX_2B: dict[str, Any] = {
    "num_attention_heads": 30,
    "attention_head_dim": 64,
    "in_channels": 16,
    "out_channels": 16,
    "time_embed_dim": 512,
    "text_embed_dim": 4096,
    "num_layers": 30,
    "patch_size": 2,
    "sample_height": 60,
    "sample_width": 90,
    "sample_frames": 49,
    "temporal_compression_ratio": 4,
    "max_text_seq_length": 226,
    "use_rotary_positional_embeddings": False,
}
_COGVIDEOX_5B = {**_COGVIDEOX_2B, "num_attention_heads": 48, "num_layers": 42, "use_rotary_positional_embeddings": True}


@dataclass(frozen=True)
class PublishedModel:
    """One published checkpoint: its transformer config (all layers), text encoders and VAE (class and
    config), default generation size and schedule, and the text length its pipeline pads prompts to."""

    name: str
    repo: str
    family: str
    pipeline: str
    transformer_class: str
    transformer: dict[str, Any]
    text_encoders: tuple[dict[str, Any], ...]
    vae_class: str
    vae: dict[str, Any]
    height: int
    width: int
    num_frames: int
    text_tokens: int
    num_inference_steps: int = 50
    guidance_scale: float = 5.0
    experts: int = 1  # Wan2.2 A14B: two transformers of the same config (high and low noise)
    extra: dict[str, Any] = field(default_factory=dict)  # pipeline config entries (Wan2.2: boundary_ratio)

    @property
    def text_dim(self) -> int:
        """Width of the first text encoder's output (what the transformer's text projection takes)."""
        encoder = self.text_encoders[0]
        return int(encoder.get("d_model") or encoder["hidden_size"])

    @property
    def parameters(self) -> dict[str, int]:
        """Parameters per component, from the configs instantiated on the meta device."""
        return self._sizes[0]

    @property
    def largest_other_tensor(self) -> int:
        """Elements of the largest weight tensor outside the transformer (umT5's embedding: 256384 x 4096), what
        leaf-level offloading holds on the device at once."""
        return self._sizes[1]

    @cached_property
    def _sizes(self) -> tuple[dict[str, int], int]:
        others = {
            "text_encoder" if i == 0 else f"text_encoder_{i + 1}": text_encoder_module(encoder)
            for i, encoder in enumerate(self.text_encoders)
        }
        with torch.device("meta"):
            others["vae"] = _diffusers_class(self.vae_class)(**self.vae)
        counts = {"transformer": _count(transformer_module(self))}
        if self.experts > 1:
            counts["transformer_2"] = counts["transformer"]
        counts.update({name: _count(module) for name, module in others.items()})
        largest = max(p.numel() for module in others.values() for p in module.parameters())
        return counts, largest


def _diffusers_class(name: str) -> Any:
    import diffusers

    return getattr(diffusers, name)


def transformer_module(model: PublishedModel, **overrides: Any) -> torch.nn.Module:
    """The transformer of ``model`` on the meta device (``overrides``: config entries, e.g. fewer layers)."""
    with torch.device("meta"):
        return _diffusers_class(model.transformer_class)(**{**model.transformer, **overrides})


def text_encoder_module(encoder: dict[str, Any]) -> torch.nn.Module:
    """A text encoder described like ``UMT5_XXL`` on the meta device."""
    import transformers

    config = getattr(transformers, encoder["config"])(
        **{k: v for k, v in encoder.items() if k not in ("class", "config")}
    )
    with torch.device("meta"):
        return getattr(transformers, encoder["class"])(config)


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


PUBLISHED: dict[str, PublishedModel] = {
    model.name: model
    for model in (
        PublishedModel(
            "Wan2.1-T2V-1.3B", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "wan", "WanPipeline", "WanTransformer3DModel",
            _WAN_SMALL, (UMT5_XXL,), "AutoencoderKLWan", {}, 480, 832, 81, 512,
        ),
        PublishedModel(
            "Wan2.1-T2V-14B", "Wan-AI/Wan2.1-T2V-14B-Diffusers", "wan", "WanPipeline", "WanTransformer3DModel",
            _WAN_LARGE, (UMT5_XXL,), "AutoencoderKLWan", {}, 720, 1280, 81, 512,
        ),
        PublishedModel(
            "Wan2.2-T2V-A14B", "Wan-AI/Wan2.2-T2V-A14B-Diffusers", "wan", "WanPipeline", "WanTransformer3DModel",
            _WAN_LARGE, (UMT5_XXL,), "AutoencoderKLWan", {}, 720, 1280, 81, 512,
            guidance_scale=4.0, experts=2, extra={"boundary_ratio": 0.875},
        ),
        PublishedModel(
            "HunyuanVideo", "hunyuanvideo-community/HunyuanVideo", "hunyuan_video", "HunyuanVideoPipeline",
            "HunyuanVideoTransformer3DModel", {}, (LLAMA_3_8B, CLIP_L_TEXT), "AutoencoderKLHunyuanVideo", {},
            720, 1280, 129, 256, guidance_scale=6.0,
        ),
        PublishedModel(
            "Mochi-1-preview", "genmo/mochi-1-preview", "mochi", "MochiPipeline", "MochiTransformer3DModel", {},
            (T5_XXL,), "AutoencoderKLMochi", {}, 480, 848, 85, 256, num_inference_steps=64, guidance_scale=4.5,
        ),
        PublishedModel(
            "CogVideoX-2b", "THUDM/CogVideoX-2b", "cogvideox", "CogVideoXPipeline", "CogVideoXTransformer3DModel",
            _COGVIDEOX_2B, (T5_XXL,), "AutoencoderKLCogVideoX", {}, 480, 720, 49, 226, guidance_scale=6.0,
        ),
        PublishedModel(
            "CogVideoX-5b", "THUDM/CogVideoX-5b", "cogvideox", "CogVideoXPipeline", "CogVideoXTransformer3DModel",
            _COGVIDEOX_5B, (T5_XXL,), "AutoencoderKLCogVideoX", {}, 480, 720, 49, 226, guidance_scale=6.0,
        ),
        PublishedModel(
            "LTX-Video", "Lightricks/LTX-Video", "ltx", "LTXPipeline", "LTXVideoTransformer3DModel", {},
            (T5_XXL,), "AutoencoderKLLTXVideo", {}, 512, 704, 161, 128, guidance_scale=3.0,
        ),
    )
}  # fmt: skip


def published_model(name: str) -> PublishedModel:
    """A published checkpoint by name (case-insensitive; the repo id works too), or a one-line error."""
    for model in PUBLISHED.values():
        if name.lower() in (model.name.lower(), model.repo.lower()):
            return model
    raise VditscopeError(f"unknown published model {name}; choose one of {', '.join(PUBLISHED)}")
