"""The shapes data set, the exact pixel VAE and the resumable tiny-model trainer."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vditscope import PixelShuffleVAE
from vditscope.data import shapes
from vditscope.training import tiny

SMALL = replace(tiny.TinyConfig(), frames=5, batch=2, layers=1, heads=2, ffn_dim=64, warmup=2)


def test_rendered_clips_read_back_as_captioned() -> None:
    rng = np.random.default_rng(0)
    for spec in shapes.all_specs():
        video = shapes.render_clip(spec, frames=9, size=32, rng=rng)
        assert video.shape == (9, 32, 32, 3) and video.min() >= 0 and video.max() <= 1
        measured = shapes.measure_clip(video, spec.background)
        assert (measured.color, measured.direction) == (spec.color, spec.direction), spec


def test_frames_without_a_shape_read_as_no_shape() -> None:
    """A clip of only the background (and a little noise) has no colour or direction to report."""
    rng = np.random.default_rng(1)
    for background in shapes.BACKGROUNDS:
        video = np.broadcast_to(np.asarray(shapes.BACKGROUNDS[background], dtype=np.float32), (9, 32, 32, 3))
        video = np.clip(video + rng.normal(0, 0.03, video.shape).astype(np.float32), 0, 1)
        video[4, 3, 5] = 1 - video[4, 3, 5]  # one stray pixel is not a shape
        measured = shapes.measure_clip(video, background)
        assert (measured.color, measured.direction) == (shapes.NO_SHAPE, shapes.NO_SHAPE), background


def test_clips_are_deterministic_by_seed() -> None:
    spec = shapes.ClipSpec("red", "triangle", "up", "gray")
    a = shapes.render_clip(spec, frames=5, size=16, rng=np.random.default_rng(3))
    b = shapes.render_clip(spec, frames=5, size=16, rng=np.random.default_rng(3))
    c = shapes.render_clip(spec, frames=5, size=16, rng=np.random.default_rng(4))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert spec.caption == "a red triangle moving up on a gray background"


def test_splits_are_disjoint_and_batches_balanced() -> None:
    train, held = shapes.split_specs(0)
    assert len(held) == 40 and not set(train) & set(held)
    assert {s.direction for s in held} == set(shapes.DIRECTIONS)
    batch = shapes.sample_specs(16, np.random.default_rng(1), train)
    counts = {d: sum(s.direction == d for s in batch) for d in shapes.DIRECTIONS}
    assert set(counts.values()) == {4}


def test_pixel_vae_is_exact_and_reloads(tmp_path: Path) -> None:
    vae = PixelShuffleVAE(3, 2, 2)
    video = torch.rand(2, 3, 7, 8, 12)
    latent = vae.encode(video).latent_dist.sample()
    assert latent.shape == (2, 24, 4, 4, 6) and vae.config.z_dim == 24
    assert torch.equal(vae.decode(latent).sample, video)
    vae.save_pretrained(tmp_path)
    again = PixelShuffleVAE.from_pretrained(tmp_path)
    assert again.config.scale_factor_temporal == 2 and again.config.block_out_channels == [3, 3]
    try:
        vae.encode(torch.rand(1, 3, 6, 8, 8))
    except ValueError as exc:
        assert "does not fold" in str(exc)
    else:
        raise AssertionError("a frame count that does not fold was accepted")


def test_training_resumes_to_the_same_weights(tmp_path: Path) -> None:
    tiny.train(tmp_path / "straight", SMALL, steps=4, checkpoint_every=100)
    # an interrupted run: the time limit stops it after its first step, with a checkpoint
    tiny.train(tmp_path / "resumed", SMALL, steps=4, minutes=0, checkpoint_every=100)
    assert '"step": 1' in (tmp_path / "resumed" / tiny.STATE).read_text()
    tiny.train(tmp_path / "resumed", SMALL, steps=4, checkpoint_every=100)
    straight = load_file(str(tmp_path / "straight" / tiny.CHECKPOINT))
    resumed = load_file(str(tmp_path / "resumed" / tiny.CHECKPOINT))
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    state = (tmp_path / "resumed" / tiny.STATE).read_text()
    assert '"step": 4' in state


def test_exported_pipeline_generates_through_wan_pipeline(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    from diffusers import WanPipeline

    tiny.train(tmp_path / "run", SMALL, steps=1)
    capfd.readouterr()
    target = tiny.export_pipeline(tmp_path / "run", tmp_path / "pipe")
    printed = capfd.readouterr()
    assert "shards" not in printed.err + printed.out and "Loading" not in printed.err + printed.out
    pipe = WanPipeline.from_pretrained(target)
    pipe.set_progress_bar_config(disable=True)
    settings = dict(SMALL.generation(), num_inference_steps=2)
    frames = pipe(
        prompt="a red square moving left on a black background",
        output_type="np",
        generator=torch.Generator().manual_seed(0),
        **settings,
    ).frames[0]
    assert frames.shape == (SMALL.frames, SMALL.size, SMALL.size, 3)
    assert (target / "vditscope.json").is_file()


def test_the_tokenizer_knows_every_caption_word() -> None:
    """Every word of every caption has its own id: "background", a placeholder's name and a literal word of the
    template, was once dropped to <unk>."""
    from vditscope.data import shapes
    from vditscope.training.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    unk = tokenizer.convert_tokens_to_ids("<unk>")
    for spec in shapes.split_specs(0, 40)[1][:10]:
        ids = tokenizer(spec.caption)["input_ids"]
        assert unk not in ids and len(ids) == len(spec.caption.split()) + 1, spec.caption
    assert tokenizer.convert_tokens_to_ids("background") != unk
