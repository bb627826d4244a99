"""The shapes data set, the exact pixel VAE and the resumable tiny-model trainer."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, fields, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vditscope import PixelShuffleVAE
from vditscope.data import shapes
from vditscope.training import tiny

SMALL = replace(tiny.TinyConfig(), frames=5, batch=2, layers=1, heads=2, ffn_dim=64, warmup=2)


# a centred, trailed style on a faint steady pattern, whatever the defaults are
CENTRED = shapes.ClipStyle(start="centre", trail=3, texture=0.05, texture_cycles=3, flicker=0.0)
STYLES = {
    **shapes.CLIP_STYLES,
    "centre-no-trail": replace(CENTRED, trail=0),
    "wrap-drift": replace(shapes.CLIP_STYLES["wrap"], drift=True),
}


@pytest.mark.parametrize("style", STYLES.values(), ids=STYLES)
def test_rendered_clips_read_back_as_captioned(style: shapes.ClipStyle) -> None:
    rng = np.random.default_rng(0)
    for spec in shapes.all_specs():
        video = shapes.render_clip(spec, frames=9, size=32, rng=rng, style=style)
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


def test_legacy_clips_are_the_ones_the_shipped_models_trained_on() -> None:
    """The legacy style renders exactly what the data set rendered before clip styles existed (a digest taken
    from that code), so a model trained then is evaluated on its own data."""
    spec = shapes.ClipSpec("red", "triangle", "up", "gray")
    video = shapes.render_clip(spec, frames=5, size=16, rng=np.random.default_rng(3), style=shapes.LEGACY_STYLE)
    digest = hashlib.sha256(video.tobytes()).hexdigest()
    assert digest == "0dfeeda31c07569d1f659c6ef32f265dfac54acd044baa6f164be4a4844f0082"


def _along(track: np.ndarray, direction: str) -> np.ndarray:
    """The centroid's coordinate along the motion, signed so that it grows in the direction."""
    dy, dx = shapes.DIRECTIONS[direction]
    return track[:, 1] * dx if dx else track[:, 0] * dy


def test_centred_clips_start_at_the_centre_whatever_the_direction() -> None:
    """Only the motion tells the direction: the first frame's shape sits at the centre (within the jitter),
    and travels the centred distance (an edge start is 6-9 px off the centre)."""
    style = replace(CENTRED, trail=0, texture=0.0)
    for i, spec in enumerate(shapes.all_specs()):
        video = shapes.render_clip(spec, frames=17, size=32, rng=np.random.default_rng(i), style=style)
        along = _along(shapes.shape_track(video, spec.background), spec.direction)
        centre = 16 * sum(shapes.DIRECTIONS[spec.direction])
        assert abs(along[0] - centre) <= shapes.CENTRE_JITTER + 2.5, spec  # a triangle's centroid is off its box's
        travel = style.travel - shapes.TRAVEL_JITTER, style.travel + shapes.TRAVEL_JITTER
        assert travel[0] - 1.5 <= along[-1] - along[0] <= travel[1] + 0.6, spec
        assert np.all(np.diff(along) > -0.3), spec  # time runs forward


def test_a_wrapping_clip_keeps_the_whole_shape_and_its_motion_reads_across_the_edge() -> None:
    """On a frame that wraps, the shape's coverage is the same in every frame (nothing is cut at an edge), and
    the motion reads right even when the shape crosses the edge."""
    style = replace(CENTRED, start="wrap", trail=0, texture=0.0)
    crossed = 0
    for i, spec in enumerate(shapes.all_specs()[::5]):
        video = shapes.render_clip(spec, frames=17, size=32, rng=np.random.default_rng(i), style=style)
        weight = shapes.shape_weight(video, spec.background)
        np.testing.assert_allclose(weight.sum(axis=(1, 2)), weight[0].sum(), rtol=0.03)
        rows, columns = weight.any(axis=2), weight.any(axis=1)  # (F, H), (F, W)
        crossed += bool((rows[:, 0] & rows[:, -1]).any() or (columns[:, 0] & columns[:, -1]).any())
        assert shapes.measure_clip(video, spec.background).direction == spec.direction, spec
    assert crossed >= 3


def test_stride_clips_move_one_video_token_per_latent_frame() -> None:
    """``stride`` clips of 9 frames: from latent frame to latent frame (frame 0 alone, then pairs) the shape moves
    4 px along its direction on average, give or take the travel's jitter and its placement on whole pixels, and
    not across it (the other styles move 1.3-1.9 px at 17 frames); a token of the tiny models covers 4 x 4 px (the
    VAE's 2 x 2 pixels, the transformer's 2 x 2 patch)."""
    config = tiny.TinyConfig(frames=9).with_style(shapes.CLIP_STYLES["stride"])
    token = config.spatial_factor * 2  # the tiny models' patch is 2 x 2 latent pixels
    jitter = shapes.TRAVEL_JITTER / (config.frames - 1) * config.temporal_factor
    style = replace(config.clip_style(), trail=0, texture=0.0, flicker=0.0)  # the shape alone
    for i, spec in enumerate(shapes.all_specs()[::7]):
        video = shapes.render_clip(spec, frames=config.frames, size=32, rng=np.random.default_rng(i), style=style)
        weight = shapes.shape_weight(video, spec.background)
        latent = [weight[f : f + 2].mean(axis=0) for f in range(1, config.frames, 2)]  # the VAE's pairs after frame 0
        dy, dx = shapes.DIRECTIONS[spec.direction]
        per_latent_frame = np.asarray(shapes.circular_shift(latent[0], latent[-1])) / (len(latent) - 1)
        np.testing.assert_allclose(per_latent_frame, (dy * token, dx * token), atol=jitter + 0.5, err_msg=str(spec))


def test_circular_shift_finds_sub_pixel_motion() -> None:
    """circular_shift against the known shift of a smooth blob (float64), across the edge too."""
    ys, xs = np.mgrid[:32, :32]
    for cy, cx, dy, dx in [(10.0, 12.0, 0.0, 7.4), (16.0, 30.0, -5.6, 4.0), (3.0, 5.0, 9.3, -11.2)]:

        def blob(y: float, x: float) -> np.ndarray:
            wy = np.minimum(np.abs(ys - y), 32 - np.abs(ys - y))  # distances on the torus
            wx = np.minimum(np.abs(xs - x), 32 - np.abs(xs - x))
            return np.exp(-(wy**2 + wx**2) / (2 * 2.5**2))

        found = shapes.circular_shift(blob(cy, cx), blob((cy + dy) % 32, (cx + dx) % 32))
        np.testing.assert_allclose(found, (dy, dx), atol=0.15)


def test_motion_beyond_half_a_frame_reads_the_right_way() -> None:
    """A square crossing 20 px of a 32 px frame (2.5 px per frame, no wrap): one shift from the first frames to the
    last would wrap round and read it reversed; the chained frame-to-frame reading gives 20 px the right way."""
    moves = {"down": (1, 0), "up": (-1, 0), "right": (0, 1), "left": (0, -1)}
    for direction, (sy, sx) in moves.items():
        video = np.zeros((9, 32, 32, 3), np.float32)
        for f in range(9):
            y, x = (16 + s * (2.5 * f - 10) for s in (sy, sx))
            top, left = round(y) - 3, round(x) - 3
            video[f, top : top + 6, left : left + 6] = shapes.COLORS["red"]
        measured = shapes.measure_clip(video, "black")
        assert measured.direction == direction and measured.color == "red"
        np.testing.assert_allclose(measured.displacement, (20 * sy, 20 * sx), atol=0.5)


def test_the_trail_lies_behind_the_shape() -> None:
    """The trail's pixels (the same clip with and without it) sit behind the shape in every frame."""
    for i, spec in enumerate(shapes.all_specs()[::7]):
        plain = shapes.render_clip(
            spec, frames=9, size=32, rng=np.random.default_rng(i), style=replace(CENTRED, trail=0)
        )
        trailed = shapes.render_clip(spec, frames=9, size=32, rng=np.random.default_rng(i), style=CENTRED)
        extra = np.abs(trailed - plain).sum(-1)  # (F, H, W)
        assert extra.sum() > 0
        ys, xs = np.mgrid[:32, :32]
        shape_at = _along(shapes.shape_track(plain, spec.background), spec.direction)
        total = extra.sum(axis=(1, 2))
        trail_at = _along(
            np.stack([(extra * ys).sum((1, 2)) / total, (extra * xs).sum((1, 2)) / total], 1), spec.direction
        )
        assert np.all(trail_at < shape_at - 3), spec


def test_the_background_pattern_is_static_and_faint() -> None:
    spec = shapes.ClipSpec("white", "circle", "down", "gray")
    video = shapes.render_clip(spec, frames=9, size=32, rng=np.random.default_rng(2), style=CENTRED)
    background = np.asarray(shapes.BACKGROUNDS["gray"], dtype=np.float32)
    untouched = (np.abs(video - video[0]).sum(-1) == 0).all(axis=0)  # pixels no shape or trail ever covers
    assert untouched.mean() > 0.4
    pattern = np.abs(video[0][untouched] - background)
    assert pattern.max() <= CENTRED.texture + 1e-6 and pattern.max() > 0.02
    plain = shapes.render_clip(spec, frames=9, size=32, rng=np.random.default_rng(2), style=replace(CENTRED, texture=0))
    assert np.all(plain[0][untouched] == background)


def test_a_drifting_pattern_moves_with_the_shape() -> None:
    """With drift the pattern moved by whole pixels is the unmoved one rolled (it wraps, in whole cycles), and each
    frame's background is the pattern moved as far as the shape has moved; without drift it stays."""
    paint = shapes.clip_background((0.5, 0.5, 0.5), 32, 0.1, 6, np.random.default_rng(5))
    np.testing.assert_allclose(paint((3.0, -5.0)), np.roll(paint((0.0, 0.0)), (3, -5), axis=(0, 1)), atol=1e-6)
    style = replace(shapes.CLIP_STYLES["wrap"], trail=0, flicker=0.0, drift=True)
    for i, spec in enumerate(shapes.all_specs()[::9]):
        video = shapes.render_clip(spec, frames=17, size=32, rng=np.random.default_rng(i), style=style)
        rng = np.random.default_rng(i)  # render_clip's draws for a wrapping clip: place (twice), travel, pattern
        rng.uniform(0, 1, 3)
        span = rng.uniform(style.travel - shapes.TRAVEL_JITTER, style.travel + shapes.TRAVEL_JITTER)
        colour = shapes.BACKGROUNDS[spec.background]
        paint = shapes.clip_background(colour, 32, style.texture, style.texture_cycles, rng)
        dy, dx = shapes.DIRECTIONS[spec.direction]
        recoloured = replace(spec, color="white" if spec.color != "white" else "red")
        other = shapes.render_clip(recoloured, frames=17, size=32, rng=np.random.default_rng(i), style=style)
        uncovered = (video == other).all(-1)  # what the shape covers not at all
        for t in (0, 8, 16):
            moved = (dy + dx) * span * t / 16
            expected = paint((moved * dy, moved * dx))
            np.testing.assert_allclose(video[t][uncovered[t]], expected[uncovered[t]], atol=1e-6)
        still = shapes.render_clip(
            spec, frames=17, size=32, rng=np.random.default_rng(i), style=replace(style, drift=False)
        )
        assert np.array_equal(still[0], video[0]) and not np.allclose(still[-1], video[-1])


def test_grain_is_static_per_pixel_and_grey() -> None:
    """Grain adds one grey value per pixel within its amplitude, the same in every frame where no shape covers
    it; neighbouring pixels' values are unrelated (it is not the smooth pattern), and without grain the clip is
    the same draw for draw (the draw comes last)."""
    spec = shapes.ClipSpec("white", "circle", "down", "gray")
    style = replace(CENTRED, grain=0.1)
    plain = shapes.render_clip(spec, frames=9, size=32, rng=np.random.default_rng(2), style=CENTRED)
    grained = shapes.render_clip(spec, frames=9, size=32, rng=np.random.default_rng(2), style=style)
    untouched = (np.abs(plain - plain[0]).sum(-1) == 0).all(axis=0)  # pixels no shape or trail ever covers
    grain = (grained - plain)[:, untouched]  # (F, pixels, 3)
    assert np.abs(grain).max() <= 0.1 + 1e-6 and np.abs(grain).mean() > 0.03
    np.testing.assert_allclose(grain, grain[:1].repeat(9, 0), atol=1e-6)  # static
    np.testing.assert_allclose(grain, grain[..., :1].repeat(3, -1), atol=1e-6)  # grey
    rows = (grained - plain)[0, ..., 0]
    assert abs(np.corrcoef(rows[:, :-1].ravel(), rows[:, 1:].ravel())[0, 1]) < 0.2  # no neighbour correlation
    again = shapes.render_clip(spec, frames=9, size=32, rng=np.random.default_rng(2), style=replace(style, grain=0))
    assert np.array_equal(again, plain)


def test_flicker_moves_each_frame_as_a_whole() -> None:
    """With flicker, a frame differs from the same clip without it by one offset over all its pixels (none
    clipped on a gray background), within the flicker; the offsets differ between frames."""
    spec = shapes.ClipSpec("blue", "square", "left", "gray")
    steady = shapes.render_clip(spec, frames=9, size=32, rng=np.random.default_rng(4), style=CENTRED)
    style = replace(CENTRED, flicker=0.05)
    flickering = shapes.render_clip(spec, frames=9, size=32, rng=np.random.default_rng(4), style=style)
    offsets = (flickering - steady).reshape(9, -1)
    np.testing.assert_allclose(offsets, offsets[:, :1].repeat(offsets.shape[1], 1), atol=1e-6)
    assert np.abs(offsets).max() <= 0.05 + 1e-6 and np.ptp(offsets[:, 0]) > 0.01


@pytest.mark.parametrize("family", ["wan", "cogvideox"])
def test_the_qk_norms_learn_at_their_own_rate(family: str) -> None:
    """qk_norm_lr_scale puts the attention's q and k norms (gains and biases, every layer) in a group of their own
    that steps at that multiple of the learning rate; at 1 there is one group, as runs saved before it had."""
    from vditscope.training.checkpoint import optimizer_step
    from vditscope.training.tiny import build_pipeline, parameter_groups

    config = replace(SMALL, family=family, qk_norm_lr_scale=10.0)
    pipe = build_pipeline(config)
    groups = parameter_groups(pipe, config)
    names = {id(p): name for name, p in pipe.transformer.named_parameters()}
    norm_names = sorted(names[id(p)] for p in groups[1]["params"])
    # per layer, CogVideoX: the gain and bias of q's and k's layer norms; Wan: q's and k's RMS-norm gains in its
    # self- and cross-attention
    assert len(norm_names) == config.layers * 4
    assert all(name.split(".")[-2] in ("norm_q", "norm_k") for name in norm_names)
    assert not any(names.get(id(p), "").split(".")[-2:-1] in (["norm_q"], ["norm_k"]) for p in groups[0]["params"])
    optimizer = torch.optim.AdamW(groups, lr=1e-3)
    params = [p for group in groups for p in group["params"]]
    optimizer_step(optimizer, sum(p.sum() for p in params), params, 2e-4)
    assert [group["lr"] for group in optimizer.param_groups] == [2e-4, pytest.approx(2e-3)]
    assert len(parameter_groups(pipe, SMALL)) == 1
    assert tiny.TinyConfig.from_saved({"family": family}).qk_norm_lr_scale == 1.0  # saved before the field


@pytest.mark.parametrize("family", ["wan", "cogvideox"])
def test_the_qk_norms_start_at_the_configured_gain(family: str) -> None:
    """qk_norm_gain sets every q and k norm's initial gain (their biases stay 0) and nothing else; at 1 the
    pipeline is the one built before the field existed."""
    from vditscope.training.tiny import build_pipeline

    plain = build_pipeline(replace(SMALL, family=family)).transformer.state_dict()
    sharp = build_pipeline(replace(SMALL, family=family, qk_norm_gain=2.0)).transformer.state_dict()
    gains = [k for k in plain if k.split(".")[-2:] in (["norm_q", "weight"], ["norm_k", "weight"])]
    assert len(gains) == SMALL.layers * (4 if family == "wan" else 2)  # Wan: self- and cross-attention
    assert all(torch.equal(plain[k], torch.ones_like(plain[k])) for k in gains)
    assert all(torch.equal(sharp[k], torch.full_like(plain[k], 2.0)) for k in gains)
    assert all(torch.equal(plain[k], sharp[k]) for k in plain if k not in gains)
    assert tiny.TinyConfig.from_saved({"family": family}).qk_norm_gain == 1.0


def test_saved_configurations_keep_the_clips_they_trained_on() -> None:
    """A configuration saved before clip styles (and rotary positions) existed trained on the legacy clips without
    rotary positions; a new one keeps its own."""
    style_fields = {f.name for f in fields(shapes.ClipStyle)}
    saved = {k: v for k, v in asdict(tiny.TinyConfig()).items() if k not in {*style_fields, "rotary"}}
    legacy = tiny.TinyConfig.from_saved(saved)
    assert legacy.clip_style() == shapes.LEGACY_STYLE and not legacy.rotary
    assert tiny.TinyConfig.from_saved(asdict(tiny.TinyConfig(rotary=True))).rotary
    wrap = tiny.TinyConfig().with_style(shapes.CLIP_STYLES["wrap"])
    assert tiny.TinyConfig.from_saved(asdict(wrap)) == wrap and wrap.clip_style() == shapes.CLIP_STYLES["wrap"]
    assert tiny.TinyConfig().clip_style() == shapes.DEFAULT_STYLE
    assert tiny.TinyConfig.from_saved({**asdict(wrap), "steps": 3000}) == wrap  # other keys are left out


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


SETS = replace(SMALL, batch=4, direction_sets=True, set_contrast=2.0)
FAST_QK = replace(SMALL, qk_norm_lr_scale=10.0)


@pytest.mark.parametrize("config", [SMALL, SETS, FAST_QK], ids=["clips", "direction-sets", "fast-qk-norms"])
def test_training_resumes_to_the_same_weights(tmp_path: Path, config: tiny.TinyConfig) -> None:
    tiny.train(tmp_path / "straight", config, steps=4, checkpoint_every=100)
    # an interrupted run: the time limit stops it after its first step, with a checkpoint
    tiny.train(tmp_path / "resumed", config, steps=4, minutes=0, checkpoint_every=100)
    assert '"step": 1' in (tmp_path / "resumed" / tiny.STATE).read_text()
    tiny.train(tmp_path / "resumed", config, steps=4, checkpoint_every=100)
    straight = load_file(str(tmp_path / "straight" / tiny.CHECKPOINT))
    resumed = load_file(str(tmp_path / "resumed" / tiny.CHECKPOINT))
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    state = (tmp_path / "resumed" / tiny.STATE).read_text()
    assert '"step": 4' in state


def test_direction_sets_differ_only_in_direction_and_share_their_noise() -> None:
    """With direction sets a batch is sets of one clip in each direction the training split holds, rendered from
    the same draws (with no trail, clips moving along the same axis start the same), and the loss gives every
    member of a set the same noise and noise level."""
    from vditscope.training.recipes import recipe_for, shared_noise

    train_specs, held = shapes.split_specs(0)
    config = replace(SMALL, batch=16, direction_sets=True).with_style(replace(CENTRED, trail=0))
    videos, captions, groups = tiny.make_grouped_batch(replace(config, caption_dropout=0.0), 3, train_specs)
    assert sum(groups) == 16 == len(captions) == len(videos) and max(groups) > 1
    start = 0
    for size in groups:
        members = captions[start : start + size]
        assert len({c.replace(c.split()[4], "") for c in members}) == 1  # the same caption but the direction
        assert {c.split()[4] for c in members} <= set(shapes.DIRECTIONS) and len(set(members)) == size
        assert not {c for c in members} & {s.caption for s in held}
        first = {c.split()[4]: videos[start + i, :, 0] for i, c in enumerate(members)}
        for a, b in (("left", "right"), ("up", "down")):
            if a in first and b in first:
                assert torch.allclose(first[a], first[b], atol=1e-6), members
        start += size
    assert tiny.make_batch(replace(config, direction_sets=False), 3, train_specs)[0].shape == videos.shape
    recipe = recipe_for("wan")
    pipe = tiny.build_pipeline(config)
    x0 = torch.randn(5, 24, 3, 4, 4)
    noised = shared_noise(recipe, pipe, x0, torch.Generator().manual_seed(0), 3.0, [3, 2])
    noise = noised.target + x0  # the flow target is noise - x0
    assert torch.equal(noised.timestep[:3], noised.timestep[:1].expand(3)) and noised.timestep[3] != noised.timestep[0]
    assert torch.allclose(noise[:3], noise[:1].expand(3, -1, -1, -1, -1), atol=1e-6)
    assert torch.allclose(noise[3], noise[4], atol=1e-6) and not torch.allclose(noise[0], noise[3])


def test_the_set_loss_compares_what_tells_a_sets_members_apart() -> None:
    """The set term is 0 when each set's predictions miss their targets by one common error, and otherwise the
    mean square of the members' deviations from their set's mean, predicted against target; sets of one add none."""
    from vditscope.training.recipes import set_differences_loss

    generator = torch.Generator().manual_seed(0)
    target = torch.randn(6, 2, 3, dtype=torch.float64, generator=generator)
    common = torch.randn(2, 1, 2, 3, dtype=torch.float64, generator=generator)
    shifted = target.clone()
    shifted[:3] += common[0]
    shifted[3:5] += common[1]
    assert float(set_differences_loss(shifted, target, [3, 2, 1])) < 1e-24
    prediction = torch.randn(6, 2, 3, dtype=torch.float64, generator=generator)
    expected = []
    for lo, hi in ((0, 3), (3, 5)):
        p, t = prediction[lo:hi], target[lo:hi]
        expected += [float(((p[i] - p.mean(0)) - (t[i] - t.mean(0))).square().mean()) for i in range(hi - lo)]
    np.testing.assert_allclose(float(set_differences_loss(prediction, target, [3, 2, 1])), np.mean(expected))


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


def test_render_clips_takes_the_clips_a_model_trained_on(tmp_path: Path) -> None:
    """`render-clips --model M` renders M's own training clips: tiny-wan and tiny-cogvideox trained on the legacy
    (edge) clips, tiny-cogvideox-motion on the grain clips; a folder without a shapes training entry is refused in one
    line."""
    from vditscope.errors import VditscopeError
    from vditscope.training.clips import shapes_training

    assert shapes_training("tiny-cogvideox").clip_style() == shapes.LEGACY_STYLE
    assert shapes_training("tiny-wan").clip_style() == shapes.DEFAULT_STYLE == shapes.CLIP_STYLES["edge"]
    assert shapes_training("tiny").clip_style() == shapes_training("tiny-cogvideox-motion").clip_style()
    assert shapes_training("tiny-cogvideox-motion").clip_style() == shapes.CLIP_STYLES["grain"]
    (tmp_path / "model_index.json").write_text("{}")
    with pytest.raises(VditscopeError, match="not trained on the shapes clips"):
        shapes_training(tmp_path)


def test_train_tiny_recipes_are_the_shipped_models_configurations() -> None:
    """What train-tiny trains per family, with the README's flags, is what each shipped model recorded; --rotary
    on Wan, a frame count that does not fold into latent frames, a temporal factor other than 1 or 2 and a q/k norm
    gain that is not positive are refused in one line."""
    from vditscope.errors import VditscopeError
    from vditscope.training.clips import shapes_training
    from vditscope.training.tiny import recipe_config

    assert recipe_config("cogvideox") == shapes_training("tiny-cogvideox-motion") == shapes_training("tiny")
    assert recipe_config("wan") == shapes_training("tiny-wan")
    edge17 = recipe_config("cogvideox", frames=17, clips="edge", rotary=False, temporal_factor=2, qk_norm_gain=1)
    assert edge17 == shapes_training("tiny-cogvideox")
    with pytest.raises(VditscopeError, match="--rotary is for CogVideoX"):
        recipe_config("wan", rotary=True)
    with pytest.raises(VditscopeError, match=r"--frames must be 1 \+ 2 x \(latent frames - 1\)"):
        recipe_config("cogvideox", frames=10, temporal_factor=2)
    with pytest.raises(VditscopeError, match="--frames must be"):
        recipe_config("wan", frames=1, temporal_factor=1)
    assert recipe_config("wan", frames=10, temporal_factor=1).frames == 10  # one video frame per latent frame
    with pytest.raises(VditscopeError, match="--temporal-factor must be 1 or 2"):
        recipe_config("cogvideox", temporal_factor=3)
    with pytest.raises(VditscopeError, match="--qk-norm-gain must be positive"):
        recipe_config("cogvideox", qk_norm_gain=0)
