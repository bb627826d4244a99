"""capture() on real diffusers model code of all five families (tiny random models)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import vditscope
from vditscope import TokenLayout, UnsupportedModelError, capture
from vditscope.capture import TABLE_COLUMNS
from vditscope.stats.reference import dense_attention_stats

from ..families import ALL_FAMILIES, FamilyCase

FAMILY_IDS = [f.__name__.removeprefix("make_") for f in ALL_FAMILIES]


def _forward(case: FamilyCase) -> torch.Tensor:
    with torch.no_grad():
        return case.model(**case.inputs, return_dict=False)[0]


def _snapshot(model: torch.nn.Module) -> dict:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "dicts": {name: dict(m.__dict__) for name, m in model.named_modules()},
        "processors": {name: getattr(m, "processor", None) for name, m in model.named_modules()},
    }


def _assert_restored(model: torch.nn.Module, before: dict) -> None:
    assert F.scaled_dot_product_attention is torch._C._nn.scaled_dot_product_attention
    after = _snapshot(model)
    assert after["state"].keys() == before["state"].keys()
    assert all(torch.equal(after["state"][k], v) for k, v in before["state"].items())
    for name, attrs in before["dicts"].items():
        now = after["dicts"][name]
        assert now.keys() == attrs.keys(), f"{name}: attributes changed {set(now) ^ set(attrs)}"
        for key, value in attrs.items():
            if key.startswith("_forward") or key.startswith("_backward") or key.endswith("hooks"):
                assert len(now[key]) == len(value), f"{name}.{key} changed"
            else:
                assert now[key] is value, f"{name}.{key} replaced"
    assert after["processors"] == before["processors"]


@pytest.fixture(params=ALL_FAMILIES, ids=FAMILY_IDS)
def case(request: pytest.FixtureRequest) -> FamilyCase:
    return request.param()


def test_outputs_bit_identical_and_model_restored(case: FamilyCase) -> None:
    reference = _forward(case)
    before = _snapshot(case.model)
    with capture(case.model) as cap:
        observed = _forward(case)
    assert torch.equal(reference, observed), "capture changed the model output"
    _assert_restored(case.model, before)
    assert torch.equal(_forward(case), reference)
    table = cap.table()
    assert list(table.columns) == TABLE_COLUMNS
    self_rows = table[table.kind == "self"]
    heads = case.model.config.num_attention_heads
    # one row per batch element, self-attention layer and head
    assert len(self_rows) == case.num_self_attn_layers * heads * len(case.inputs["hidden_states"])
    assert sorted(self_rows.layer.unique()) == list(range(case.num_self_attn_layers))
    assert self_rows[["entropy", "sink_ratio", "top10"]].notna().all().all()
    assert (self_rows.branch == "cond").all() and (self_rows.step == 0).all()


def test_layout_matches_the_family(case: FamilyCase) -> None:
    with capture(case.model) as cap:
        _forward(case)
    for record in cap.records:
        if record.kind != "self":
            continue
        layout = record.layout
        assert layout is not None and layout.grid == case.grid
        if case.text_tokens == 0:
            assert layout.text is None and layout.num_video == record.tokens
        elif case.text_first:
            assert layout.text == (0, case.text_tokens) and layout.video_start == case.text_tokens
        else:
            assert layout.video_start == 0 and layout.text[0] == layout.num_video
            assert 0 < layout.num_text <= case.text_tokens  # Mochi drops padded text tokens
        # every video query's mass is on video frames or text keys
        frame_map = record.maps["frame_map"]
        total = frame_map.sum(-1).mean(-1) + torch.as_tensor(record.text_mass)
        torch.testing.assert_close(total, torch.ones_like(total), atol=1e-5, rtol=0)


def test_statistics_match_a_dense_reference_of_the_same_call(case: FamilyCase, monkeypatch) -> None:
    """Record q, k, v of each observed call independently and recompute the statistics densely."""
    _check_against_dense_reference(case, monkeypatch)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_precision_models_get_float32_statistics_of_their_own_calls(
    case: FamilyCase, dtype: torch.dtype, monkeypatch
) -> None:
    """A bf16 or fp16 model: the statistics are float32, accumulated in float32, and equal the float64
    reference of the half-precision q, k, v the model itself computed."""
    case.model.to(dtype)
    case.inputs = {
        name: value.to(dtype) if isinstance(value, torch.Tensor) and value.is_floating_point() else value
        for name, value in case.inputs.items()
    }
    records = _check_against_dense_reference(case, monkeypatch)
    assert all(record.maps["frame_map"].dtype == torch.float32 for record in records)


def _check_against_dense_reference(case: FamilyCase, monkeypatch) -> list:
    """Capture one forward, spying on each self-attention call's q, k, v; compare every record with the
    float64 dense reference of its call. Returns the self-attention records."""
    with capture(case.model, cross_attention=False) as cap:
        from vditscope.capture import sdpa_patch

        calls = []
        original_observe = cap._observe

        def spy(site, state, start, call):
            if site.kind == "self":
                mask = None if call.attn_mask is None else call.attn_mask.clone()
                calls.append((call.q.clone(), call.k.clone(), call.v.clone(), mask))
            return original_observe(site, state, start, call)

        monkeypatch.setattr(cap, "_observe", spy)
        assert sdpa_patch._installed >= 1
        _forward(case)
    records = [r for r in cap.records if r.kind == "self"]
    batch = len(case.inputs["hidden_states"])
    # the records are one per batch element, in call order
    flat = []
    for q, k, v, mask in calls:
        for b in range(q.shape[0]):
            flat.append((q[b : b + 1], k[b : b + 1], v[b : b + 1], None if mask is None else mask[b : b + 1]))
    assert len(flat) == len(records) == case.num_self_attn_layers * batch
    for (q, k, v, mask), record in zip(flat, records, strict=True):
        n = k.shape[2]
        num_video = case.grid[0] * case.grid[1] * case.grid[2]
        if case.text_first:
            layout = TokenLayout(*case.grid, video_start=n - num_video, text=(0, n - num_video))
        elif case.text_tokens:
            layout = TokenLayout(*case.grid, video_start=0, text=(num_video, n))
        else:
            layout = TokenLayout(*case.grid)
        _, ref = dense_attention_stats(q.double(), k.double(), v.double(), layout=layout, attn_mask=mask)
        torch.testing.assert_close(
            torch.as_tensor(record.entropy), ref["entropy"][0].mean(-1).float(), atol=1e-4, rtol=0
        )
        torch.testing.assert_close(record.maps["frame_map"], ref["frame_map"][0].float(), atol=1e-5, rtol=0)
        torch.testing.assert_close(torch.as_tensor(record.text_mass), ref["text_mass"][0].float(), atol=1e-5, rtol=0)
        torch.testing.assert_close(torch.as_tensor(record.top_mass), ref["topk_mass"][0].float(), atol=1e-4, rtol=0)
    return records


def test_model_restored_after_an_exception(case: FamilyCase) -> None:
    reference = _forward(case)
    before = _snapshot(case.model)
    with pytest.raises(RuntimeError, match="boom"), capture(case.model):
        _forward(case)
        raise RuntimeError("boom")
    _assert_restored(case.model, before)
    assert torch.equal(_forward(case), reference)


def test_exception_inside_the_model_restores_everything() -> None:
    case = ALL_FAMILIES[0]()
    before = _snapshot(case.model)
    bad_inputs = dict(case.inputs, hidden_states=case.inputs["hidden_states"][:, :1])  # wrong channels
    with pytest.raises(Exception), capture(case.model):  # noqa: B017 - any model error
        case.model(**bad_inputs)
    _assert_restored(case.model, before)


def test_selected_layers_and_steps_only() -> None:
    case = ALL_FAMILIES[0]()
    with capture(case.model, layers=[1], steps=[1]) as cap:
        for _ in range(3):
            _forward(case)
    table = cap.table()
    assert set(table.layer) == {1}
    assert set(table.step) == {1}


def test_bad_layers_and_unsupported_models() -> None:
    case = ALL_FAMILIES[0]()
    with pytest.raises(ValueError, match="out of range"), capture(case.model, layers=[7]):
        pass
    with pytest.raises(ValueError, match="empty"), capture(case.model, layers=[]):
        pass
    with pytest.raises(UnsupportedModelError, match="wan") as info, capture(torch.nn.Linear(2, 2)):
        pass
    assert "cogvideox" in str(info.value) and "Linear" in str(info.value)
    assert F.scaled_dot_product_attention is torch._C._nn.scaled_dot_product_attention


def test_non_native_backend_is_switched_for_the_capture_and_restored() -> None:
    from diffusers.models.attention_dispatch import AttentionBackendName

    case = ALL_FAMILIES[0]()
    reference = _forward(case)
    processor = case.model.blocks[0].attn1.processor
    processor._attention_backend = AttentionBackendName.FLASH  # would fail on CPU if used
    with pytest.warns(UserWarning, match="native backend"), capture(case.model) as cap:
        observed = _forward(case)
    assert processor._attention_backend == AttentionBackendName.FLASH
    assert torch.equal(observed, reference)
    assert len(cap.table()) > 0


def test_fused_output_is_within_rounding(case: FamilyCase) -> None:
    reference = _forward(case)
    with capture(case.model, fused=True):
        observed = _forward(case)
    torch.testing.assert_close(observed, reference, atol=1e-5, rtol=1e-5)


def test_whole_tiny_wan_pipeline_steps_and_branches() -> None:
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(vditscope.tiny_model_dir("tiny-wan"))
    pipe.set_progress_bar_config(disable=True)
    settings = dict(height=32, width=32, num_frames=9, num_inference_steps=3, guidance_scale=4.0, output_type="np")

    def run():
        return pipe(
            prompt="a red square moving left on a black background",
            generator=torch.Generator().manual_seed(0),
            **settings,
        ).frames

    reference = run()
    before = _snapshot(pipe.transformer)
    scheduler_attrs = dict(pipe.scheduler.__dict__)
    with capture(pipe) as cap:
        frames = run()
        run()
    assert (frames == reference).all()
    _assert_restored(pipe.transformer, before)
    assert pipe.scheduler.__dict__.keys() == scheduler_attrs.keys()
    table = cap.table()
    assert set(table.generation) == {0, 1}
    assert sorted(table.step.unique()) == [0, 1, 2]
    assert set(table.branch) == {"cond", "uncond"}
    counts = table.groupby(["generation", "step", "branch", "kind"]).size()
    config = pipe.transformer.config
    assert (counts == config.num_layers * config.num_attention_heads).all()  # one row per layer and head


def test_triton_backend_records_the_same_table_through_the_interpreter(case: FamilyCase, triton_interpreter) -> None:
    """capture(backend="triton") on CPU tensors runs the statistics kernel in Triton's interpreter: the
    same table as the torch path (all five families: joint text, masks, grouped heads where they have them)."""
    tables = {}
    for backend in ("torch", "triton"):
        with capture(case.model, map_tiles=4, backend=backend) as cap:
            _forward(case)
        tables[backend] = cap.table()
        assert cap.backends == {backend}
    torch_table, triton_table = tables["torch"], tables["triton"]
    assert list(torch_table.columns) == list(triton_table.columns) and len(torch_table) == len(triton_table)
    numeric = torch_table.select_dtypes("number").columns
    assert ((torch_table[numeric] - triton_table[numeric]).abs().max() < 2e-4).all()
