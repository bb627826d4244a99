"""Capture on the model variants beyond the five base families: Wan 2.2 (two experts switched by
timestep), Wan 2.1 I2V (attn2 attends to CLIP image tokens in a call of its own) and CogVideoX 1.5
(temporal patch 2, latent frames padded by the pipeline); tiny random models against float64 references."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from vditscope import TokenLayout, capture
from vditscope.capture import CaptureConfig, Selection, apply_capture
from vditscope.capture.edits import AttentionEdit
from vditscope.capture.intervene import intervene
from vditscope.capture.text_ablation import TextMaskConfig, apply_text_mask
from vditscope.models.pixel_vae import PixelShuffleVAE
from vditscope.stats.reference import dense_attention_stats

from ..families import (
    BATCH_SIZE,
    IMAGE_LEN,
    TEXT_LEN,
    WAN_I2V_TEXT_LEN,
    FamilyCase,
    make_wan_i2v,
    tiny_cogvideox_1_5,
    tiny_wan,
)

BOUNDARY_RATIO = 0.875  # Wan 2.2 T2V's: with shift 3 and 4 steps, step 0 on the high-noise expert, 1-3 on the other
STEPS = 4


def _forward(case: FamilyCase) -> torch.Tensor:
    with torch.no_grad():
        return case.model(**case.inputs, return_dict=False)[0]


def _traces(model: torch.nn.Module) -> list[str]:
    """vditscope hooks left in the modules' hook registries, and modules with a patched forward (a
    pipeline's cache_context leaves an empty registry of its own on the transformer)."""
    left = [name for name, m in model.named_modules() if "forward" in m.__dict__]
    for name, module in model.named_modules():
        registry = module.__dict__.get("_diffusers_hook")
        left += [f"{name}:{hook}" for hook in getattr(registry, "hooks", {}) if hook.startswith("vditscope")]
        if registry is not None and name:
            left.append(name)  # sessions on a bare model leave no registry below the model
    return left


def _spy_calls(cap: Any, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Copies of (kind, q, k, v) of every call the capture observes, in call order."""
    calls: list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]] = []
    original = cap._observe

    def spy(site, state, start, call):
        assert call.attn_mask is None
        calls.append((site.kind, call.q.clone(), call.k.clone(), call.v.clone()))
        return original(site, state, start, call)

    monkeypatch.setattr(cap, "_observe", spy)
    return calls


def _per_element(calls: list) -> list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The spied calls split into batch elements (the records are one per element, in call order)."""
    return [(kind, q[b : b + 1], k[b : b + 1], v[b : b + 1]) for kind, q, k, v in calls for b in range(q.shape[0])]


def _check_record(record: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: TokenLayout | None) -> float:
    """Compare one record with the float64 dense reference of its call; returns the largest difference."""
    _, ref = dense_attention_stats(q.double(), k.double(), v.double(), layout=layout)
    received = ref["received"][0] / q.shape[2]
    pairs = [
        (torch.as_tensor(record.entropy), ref["entropy"][0].mean(-1)),
        (torch.as_tensor(record.top_mass), ref["topk_mass"][0]),
        (torch.as_tensor(record.sink_mass), received.amax(-1)),
    ]
    if layout is None:
        pairs.append((record.maps[f"{'text' if record.kind == 'cross' else 'image'}_received"], received))
    else:
        pairs.append((record.maps["frame_map"], ref["frame_map"][0]))
        pairs.append((torch.as_tensor(record.text_mass), ref["text_mass"][0]))
    worst = 0.0
    for got, want in pairs:
        torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=0)
        worst = max(worst, float((got.double() - want).abs().max()))
    return worst


# --- Wan I2V: the image-token call of attn2 -------------------------------------------------------


def test_wan_i2v_image_call_is_its_own_kind_and_both_calls_match_a_dense_reference(monkeypatch) -> None:
    case = make_wan_i2v()
    reference = _forward(case)
    with capture(case.model) as cap:
        calls = _spy_calls(cap, monkeypatch)
        observed = _forward(case)
    assert torch.equal(observed, reference)
    assert _traces(case.model) == []
    # per layer: attn1, then attn2's image call, then its text call
    assert [kind for kind, *_ in calls] == ["self", "image", "cross"] * 2
    records = cap.records
    assert [r.kind for r in records] == [kind for kind, *_ in _per_element(calls)]
    worst = 0.0
    for (kind, q, k, v), record in zip(_per_element(calls), records, strict=True):
        layout = TokenLayout(*case.grid) if kind == "self" else None
        worst = max(worst, _check_record(record, q, k, v, layout))
    print(f"wan i2v: max abs difference against the float64 reference {worst:.2e}")
    table = cap.table()
    tokens = table.groupby("kind")["tokens"].unique()
    assert list(tokens["image"]) == [IMAGE_LEN] and list(tokens["cross"]) == [WAN_I2V_TEXT_LEN]
    image = table[table.kind == "image"]
    assert set(image.site) == {"blocks.0.attn2", "blocks.1.attn2"} and (image.text_mass == 0).all()
    assert (table[table.kind == "cross"].text_mass == 1).all()
    # the image and the text call each hold the whole batch: samples 0..B-1 for both
    samples = [(r.layer, r.kind, r.branch, r.sample) for r in records]
    assert samples == [
        (layer, kind, "cond", b) for layer in (0, 1) for kind in ("self", "image", "cross") for b in (0, 1)
    ]


@pytest.mark.parametrize(
    ("kinds", "recorded"),
    [({"image"}, {"image"}), ({"cross"}, {"cross"}), ({"self", "image"}, {"self", "image"})],
    ids=["image", "cross", "self+image"],
)
def test_wan_i2v_selection_by_kind_observes_only_those_calls(kinds: set[str], recorded: set[str]) -> None:
    case = make_wan_i2v()
    reference = _forward(case)
    with apply_capture(case.model, CaptureConfig(where=Selection(kinds=kinds))) as cap:
        observed = _forward(case)
    assert torch.equal(observed, reference)
    assert set(cap.table().kind) == recorded
    assert len(cap.records) == len(recorded) * 2 * BATCH_SIZE  # 2 layers


def test_wan_i2v_text_mask_leaves_the_image_call() -> None:
    """The first-text-token mask hides text keys of the text call only: the image call has none."""
    case = make_wan_i2v()
    reference = _forward(case)
    with apply_text_mask(case.model, TextMaskConfig()) as mask:
        masked = _forward(case)
    assert mask.masked_calls == 2  # one text call per layer (self-attention is video only)
    assert not torch.equal(masked, reference)


# --- Wan 2.2: two experts ---------------------------------------------------------------------------


def _wan22_pipeline() -> Any:
    """A Wan 2.2-style WanPipeline: two tiny random experts switched at BOUNDARY_RATIO, no text encoder
    (the prompt comes as embeddings), a pixel-shuffle VAE."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    vae = PixelShuffleVAE(1, 2, 2)
    channels = vae.config.z_dim
    pipe = WanPipeline(
        tokenizer=None,
        text_encoder=None,
        transformer=tiny_wan(1, in_channels=channels),
        transformer_2=tiny_wan(2, in_channels=channels),
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        boundary_ratio=BOUNDARY_RATIO,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run_wan22(pipe: Any) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    embeds = torch.randn(2, 1, TEXT_LEN, 16, generator=g)
    return pipe(
        prompt_embeds=embeds[0],
        negative_prompt_embeds=embeds[1],
        height=16,
        width=32,
        num_frames=5,
        num_inference_steps=STEPS,
        guidance_scale=4.0,
        generator=g,
        output_type="latent",
    ).frames


def _expert(site: str) -> str:
    return "transformer_2" if site.startswith("transformer_2.") else "transformer"


def test_wan22_capture_records_each_expert_at_its_steps() -> None:
    pipe = _wan22_pipeline()
    reference = _run_wan22(pipe)
    with capture(pipe) as cap:
        observed = _run_wan22(pipe)
    assert torch.equal(observed, reference)
    assert _traces(pipe.transformer) == [] and _traces(pipe.transformer_2) == []
    assert {site.name for site in cap.sites} == {
        f"{prefix}blocks.{i}.{attn}" for prefix in ("", "transformer_2.") for i in (0, 1) for attn in ("attn1", "attn2")
    }
    table = cap.table()
    timesteps = pipe.scheduler.timesteps
    boundary = BOUNDARY_RATIO * pipe.scheduler.config.num_train_timesteps
    expected = {step: "transformer" if timesteps[step] >= boundary else "transformer_2" for step in range(STEPS)}
    assert set(expected.values()) == {"transformer", "transformer_2"}  # both experts ran
    experts = table.assign(expert=table.site.map(_expert)).groupby("step")["expert"].unique()
    assert {step: list(names) for step, names in experts.items()} == {s: [e] for s, e in expected.items()}
    for step, rows in table.groupby("step"):
        assert rows.timestep.to_numpy() == pytest.approx(float(timesteps[step]))
        # each expert's layers are 0..L-1; one row per layer, kind, branch and head at every step
        assert sorted(rows.layer.unique()) == [0, 1]
        assert len(rows) == 2 * 2 * 2 * pipe.transformer.config.num_attention_heads


def test_wan22_edits_with_a_layer_selection_apply_to_both_experts() -> None:
    pipe = _wan22_pipeline()
    reference = _run_wan22(pipe)
    low_noise = next(i for i, t in enumerate(pipe.scheduler.timesteps) if t < BOUNDARY_RATIO * 1000)
    for steps, edited_steps in ((None, set(range(STEPS))), ((low_noise, STEPS), set(range(low_noise, STEPS)))):
        with intervene(pipe, [AttentionEdit(temperature=3.0, layers=frozenset({1}), steps=steps)]) as edit:
            edited = _run_wan22(pipe)
        table = edit.edit_table()
        assert set(table.step) == edited_steps and set(table.layer) == {1}
        assert not torch.equal(edited, reference)  # the low-noise expert's edit alone changes the video
        assert _traces(pipe.transformer) == [] and _traces(pipe.transformer_2) == []
    assert torch.equal(_run_wan22(pipe), reference)
    assert F.scaled_dot_product_attention is torch._C._nn.scaled_dot_product_attention


# --- CogVideoX 1.5: temporal patches, padded latent frames ------------------------------------------


def test_cogvideox_1_5_pipeline_pads_frames_and_capture_lays_out_temporal_patches(monkeypatch) -> None:
    """3 latent frames (odd) are padded to 4 by the pipeline, patched by 2 into 2 token frames: the
    layout is (2, 4, 6) after the text, and every record equals the dense reference of its call."""
    from diffusers import CogVideoXDDIMScheduler, CogVideoXPipeline

    vae = PixelShuffleVAE(1, 2, 2)
    transformer = tiny_cogvideox_1_5(
        0, in_channels=vae.config.z_dim, sample_height=8, sample_width=12, sample_frames=9, temporal_compression_ratio=2
    )
    scheduler = CogVideoXDDIMScheduler(
        prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing"
    )
    pipe = CogVideoXPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    latent_frames: list[int] = []
    transformer.register_forward_pre_hook(
        lambda _m, _a, kwargs: latent_frames.append(kwargs["hidden_states"].shape[1]), with_kwargs=True
    )
    g = torch.Generator().manual_seed(0)
    embeds = torch.randn(2, 1, TEXT_LEN, 16, generator=g)
    settings = dict(height=16, width=24, num_frames=5, num_inference_steps=2, guidance_scale=4.0, output_type="latent")
    with capture(pipe) as cap:
        calls = _spy_calls(cap, monkeypatch)
        pipe(prompt_embeds=embeds[0], negative_prompt_embeds=embeds[1], generator=g, **settings)
    assert latent_frames == [4, 4]  # (5 - 1) // 2 + 1 = 3 latent frames, padded to the temporal patch
    layout = TokenLayout(2, 4, 6, video_start=TEXT_LEN, text=(0, TEXT_LEN))
    assert len(cap.records) == 2 * 2 * 2  # steps x layers x (uncond, cond) in one batched call
    worst = 0.0
    for (_, q, k, v), record in zip(_per_element(calls), cap.records, strict=True):
        assert record.layout == layout and record.tokens == TEXT_LEN + 48
        worst = max(worst, _check_record(record, q, k, v, layout))
    print(f"cogvideox 1.5: max abs difference against the float64 reference {worst:.2e}")
    assert sorted({(r.branch, r.step) for r in cap.records}) == [(b, s) for b in ("cond", "uncond") for s in (0, 1)]
