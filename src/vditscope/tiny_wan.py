"""A tiny, random-weight Wan text-to-video pipeline built entirely in code.

The pipeline is a real :class:`diffusers.WanPipeline` (UMT5 text encoder, Wan
video DiT, Wan causal 3D VAE, flow-matching Euler scheduler), shrunk so that a
full generation call with classifier-free guidance runs in a couple of seconds
on a CPU. Nothing is downloaded: the tokenizer is a word-level ``tokenizers``
model over the small caption vocabulary in :data:`VOCABULARY`, and every weight
is drawn from a seeded random generator.

Captions follow the template
``"a {color} {shape} moving {direction} on a {background} background"``.

Typical use::

    from vditscope.tiny_wan import DEFAULT_GENERATION, build_tiny_wan_pipeline

    pipe = build_tiny_wan_pipeline(seed=0)
    frames = pipe(
        prompt="a red square moving left on a black background",
        output_type="np",
        generator=torch.Generator().manual_seed(0),
        **DEFAULT_GENERATION,
    ).frames

or save it once with :func:`save_tiny_wan` and reload it with
``WanPipeline.from_pretrained(directory)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKLWan,
    FlowMatchEulerDiscreteScheduler,
    WanPipeline,
    WanTransformer3DModel,
)
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

__all__ = [
    "CAPTION_TEMPLATE",
    "DEFAULT_GENERATION",
    "VOCABULARY",
    "build_tiny_tokenizer",
    "build_tiny_wan_pipeline",
    "save_tiny_wan",
]

#: The caption template the tokenizer vocabulary is built from.
CAPTION_TEMPLATE = "a {color} {shape} moving {direction} on a {background} background"

#: The words that fill the slots of :data:`CAPTION_TEMPLATE`.
VOCABULARY: dict[str, list[str]] = dict(
    colors=["red", "green", "blue", "yellow", "white"],
    shapes=["square", "circle", "triangle"],
    directions=["left", "right", "up", "down"],
    backgrounds=["black", "gray", "white", "blue"],
)

#: Keyword arguments for ``WanPipeline.__call__``.
#:
#: 33 frames at 64x128 pixels give latents of 9 frames x 8 x 16 (temporal
#: compression 4, spatial 8); the transformer's (1, 2, 2) patches turn them into
#: a grid of 9 x 4 x 8 = 288 video tokens. The three grid axes have distinct
#: sizes so that layout mistakes (frames/height/width swapped) are visible.
DEFAULT_GENERATION: dict[str, Any] = dict(
    height=64,
    width=128,
    num_frames=33,
    num_inference_steps=8,
    guidance_scale=5.0,
)

# Special tokens, with the ids T5 uses for them.
_PAD, _EOS, _UNK = "<pad>", "</s>", "<unk>"

# Sizes of the tiny components.
_TEXT_DIM = 32  # UMT5 d_model == transformer text_dim
_TEXT_VOCAB_SIZE = 256  # embedding rows; the tokenizer uses only the first few dozen
_Z_DIM = 4  # VAE latent channels == transformer in/out channels
_MAX_TOKENIZER_LENGTH = 512
# Byte alignment of tensors in the saved safetensors files (one AVX-512 vector).
_ALIGNMENT = 64


def _caption_words() -> list[str]:
    """Return the distinct words of all captions, in first-seen order."""
    template_words = [w for w in CAPTION_TEMPLATE.split() if not w.startswith("{")]
    words: list[str] = []
    for word in template_words + [w for group in VOCABULARY.values() for w in group]:
        if word not in words:
            words.append(word)
    return words


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Build a word-level T5-style tokenizer over the caption vocabulary.

    Ids 0, 1 and 2 are ``<pad>``, ``</s>`` and ``<unk>`` (as in T5); the caption
    words follow. Text is lower-cased and split on whitespace and punctuation;
    unknown words map to ``<unk>``. With ``add_special_tokens=True`` an ``</s>``
    is appended, as T5 does, so it supports the call WanPipeline makes
    (``padding="max_length"``, ``truncation=True``, ``return_attention_mask=True``).
    """
    vocab = {_PAD: 0, _EOS: 1, _UNK: 2}
    for word in _caption_words():
        vocab[word] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=_UNK))
    backend.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single=f"$A {_EOS}",
        pair=f"$A {_EOS} $B {_EOS}",
        special_tokens=[(_EOS, vocab[_EOS])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=_PAD,
        eos_token=_EOS,
        unk_token=_UNK,
        padding_side="right",
        truncation_side="right",
        model_max_length=_MAX_TOKENIZER_LENGTH,
    )


def _build_text_encoder(vocab_size: int) -> UMT5EncoderModel:
    config = UMT5Config(
        vocab_size=vocab_size,
        d_model=_TEXT_DIM,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return UMT5EncoderModel(config).eval()


def _build_transformer() -> WanTransformer3DModel:
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=_Z_DIM,
        out_channels=_Z_DIM,
        text_dim=_TEXT_DIM,
        freq_dim=32,
        ffn_dim=64,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=64,
    ).eval()


def _build_vae() -> AutoencoderKLWan:
    return AutoencoderKLWan(
        base_dim=8,
        z_dim=_Z_DIM,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        attn_scales=[],
        temperal_downsample=[False, True, True],
        latents_mean=[0.0] * _Z_DIM,
        latents_std=[1.0] * _Z_DIM,
    ).eval()


def build_tiny_wan_pipeline(seed: int = 0) -> WanPipeline:
    """Build the tiny random-weight Wan text-to-video pipeline.

    Components: a word-level tokenizer (:func:`build_tiny_tokenizer`), a 2-layer
    ``UMT5EncoderModel`` (d_model 32), a 2-layer ``WanTransformer3DModel``
    (2 heads x 16 dims, patch (1, 2, 2)), an ``AutoencoderKLWan`` with 8 base
    channels and 4 latent channels (temporal compression 4, spatial 8), and a
    ``FlowMatchEulerDiscreteScheduler`` with shift 3.0.

    Weights depend only on ``seed`` (each component is drawn from its own
    seeded stream); the global torch RNG state is left untouched. All modules
    are float32, on CPU and in eval mode.
    """
    tokenizer = build_tiny_tokenizer()
    vocab_size = max(_TEXT_VOCAB_SIZE, len(tokenizer))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = _build_text_encoder(vocab_size)
        torch.manual_seed(seed + 1)
        transformer = _build_transformer()
        torch.manual_seed(seed + 2)
        vae = _build_vae()
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    return WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=scheduler,
        transformer=transformer,
    )


def _align_safetensors(path: Path, alignment: int = _ALIGNMENT) -> None:
    """Rewrite a safetensors file in place so its tensors start on aligned offsets.

    The format stores an 8-byte header length, a JSON header (which may be
    padded with trailing spaces) and a hole-free data buffer whose tensor order
    is free. Tensors whose byte size is a multiple of ``alignment`` are placed
    first and the header is padded so the buffer starts on an ``alignment``
    boundary of the file; since memory maps are page aligned, those tensors are
    then aligned in memory too. The remaining (small, odd-sized) tensors follow.
    Tensor names, dtypes, shapes, bytes and metadata are unchanged.
    """
    raw = path.read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_len])
    data = memoryview(raw)[8 + header_len :]
    metadata = header.pop("__metadata__", None)

    def size(name: str) -> int:
        begin, end = header[name]["data_offsets"]
        return end - begin

    names = sorted(header, key=lambda name: header[name]["data_offsets"])
    names.sort(key=lambda name: size(name) % alignment != 0)  # stable: aligned sizes first
    new_header: dict[str, Any] = {} if metadata is None else {"__metadata__": metadata}
    chunks = []
    offset = 0
    for name in names:
        begin, end = header[name]["data_offsets"]
        chunks.append(data[begin:end])
        new_header[name] = {**header[name], "data_offsets": [offset, offset + end - begin]}
        offset += end - begin
    header_bytes = json.dumps(new_header, separators=(",", ":")).encode()
    header_bytes += b" " * (-(8 + len(header_bytes)) % alignment)
    path.write_bytes(len(header_bytes).to_bytes(8, "little") + header_bytes + b"".join(chunks))


def save_tiny_wan(directory: str | Path, seed: int = 0) -> Path:
    """Build the tiny pipeline and save it as a diffusers pipeline directory.

    Weights are written as safetensors with ``save_pretrained``; next to them,
    ``vditscope.json`` records the generation settings, the caption vocabulary
    and that the weights are untrained. Reload with
    ``WanPipeline.from_pretrained(directory)`` (works with ``HF_HUB_OFFLINE=1``).

    The safetensors files are rewritten so that every tensor whose size is a
    multiple of 64 bytes starts on a 64-byte boundary (see
    :func:`_align_safetensors`). Without that, the memory-mapped weights of a
    reloaded pipeline sit at unaligned addresses, CPU matmul kernels take a
    different path, and outputs differ from the in-memory pipeline by ~1e-6.
    With it, the reloaded pipeline reproduces the built one bit for bit.

    Returns the directory as a :class:`~pathlib.Path`.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    pipe = build_tiny_wan_pipeline(seed=seed)
    pipe.save_pretrained(directory, safe_serialization=True)
    for weights_file in sorted(directory.rglob("*.safetensors")):
        _align_safetensors(weights_file)
    metadata = {
        "generation": DEFAULT_GENERATION,
        "vocabulary": VOCABULARY,
        "trained": False,
        "note": "random weights; a trained model ships in a later release",
    }
    (directory / "vditscope.json").write_text(json.dumps(metadata, indent=2) + "\n")
    return directory
