"""Retraining degenerate layers: fresh re-initialization, distillation, flow matching, resuming, export."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import imageio.v2 as imageio
import imageio.v3 as iio
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vditscope import tiny_model_dir
from vditscope.adapters import adapter_for
from vditscope.adapters.loading import load_pipeline
from vditscope.data import shapes
from vditscope.errors import VditscopeError
from vditscope.training import checkpoint
from vditscope.training.clips import read_clip
from vditscope.training.objectives import DistillObjective, vocabulary_prompts
from vditscope.training.recipes import RECIPES
from vditscope.training.retrain import (
    RetrainRequest,
    block_prefixes,
    block_tensors,
    fresh_model,
    reinitialize,
    retrain,
)

from ..families import ALL_FAMILIES

# a small training size keeps every step fast; the shipped models generate 32 x 32 x 17
SMALL = {"height": 16, "width": 16, "num_frames": 5, "device": "cpu"}


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models run fastest single-threaded, and on a busy 2-core machine far faster (~5x)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Interrupt(Exception):
    """Stands for Ctrl-C or a kill in the middle of a run."""


def _state_dict(model_dir: Path, component: str) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for path in sorted((model_dir / component).glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    return tensors


@pytest.mark.parametrize("family", [case.__name__.removeprefix("make_") for case in ALL_FAMILIES])
def test_blocks_are_the_layers_in_execution_order(family: str) -> None:
    case = next(make for make in ALL_FAMILIES if make.__name__ == f"make_{family}")()
    adapter = adapter_for(case.model)
    blocks = adapter.blocks(case.model)
    assert len(blocks) == case.num_self_attn_layers
    for site in adapter.sites(case.model):
        assert any(module is site.module for module in blocks[site.layer].modules()), site.name


def test_distillation_prompts_are_the_models_caption_vocabulary() -> None:
    settings = json.loads((tiny_model_dir("tiny-wan") / "vditscope.json").read_text())
    prompts = vocabulary_prompts(settings)
    words = settings["vocabulary"]
    assert len(set(prompts)) == len(prompts) == np.prod([len(group) for group in words.values()])
    assert "a white triangle moving down on a purple background" in prompts
    assert vocabulary_prompts({"generation": settings["generation"]}) == []


def test_reinitialization_is_a_fresh_family_init_and_the_teacher_is_the_original() -> None:
    pipe, adapter, _ = load_pipeline("tiny-cogvideox")
    transformer = pipe.transformer.requires_grad_(False)
    blocks = adapter.blocks(transformer)
    chosen = [2, 3]
    generator = torch.Generator().manual_seed(0)
    inputs = {
        "hidden_states": torch.randn(1, 3, 24, 8, 8, generator=generator),
        "encoder_hidden_states": torch.randn(1, 16, 64, generator=generator),
        "timestep": torch.tensor([400]),
        "return_dict": False,
    }
    original = transformer(**inputs)[0]
    teacher = block_tensors(blocks, chosen, block_prefixes(transformer, blocks, chosen))
    assert sorted({name.split(".")[1] for name in teacher}) == ["2", "3"]
    reinitialize(transformer, blocks, adapter.blocks(fresh_model(transformer, seed=5)), chosen)
    again = adapter.blocks(fresh_model(transformer, seed=5))
    other = adapter.blocks(fresh_model(transformer, seed=6))
    for i in chosen:
        for key, value in blocks[i].state_dict().items():
            assert torch.equal(value, again[i].state_dict()[key]), key  # deterministic by seed
        weight = blocks[i].attn1.to_q.weight
        assert not torch.equal(weight, other[i].attn1.to_q.weight)
        assert not torch.allclose(weight, teacher[f"transformer_blocks.{i}.attn1.to_q.weight"])
    assert not torch.allclose(transformer(**inputs)[0], original, atol=1e-3)
    # the teacher is the original model (up to BLAS rounding: its tensors are differently aligned copies)
    teacher_output = torch.func.functional_call(transformer, teacher, (), inputs)[0]
    assert torch.allclose(teacher_output, original, rtol=0, atol=1e-5)

    # replaying the frozen blocks 0-1 from the teacher call changes nothing in the student's loss
    recipe, empty = RECIPES["cogvideox"], inputs["encoder_hidden_states"][:1]
    embeds = torch.randn(3, 16, 64, generator=generator)
    losses = [
        DistillObjective(pipe, recipe, teacher, embeds, empty, (2, 3, 24, 8, 8), 3.0, prefix).loss(
            torch.Generator().manual_seed(7)
        )
        for prefix in ([], blocks[:2])
    ]
    assert losses[0].item() > 0 and torch.equal(losses[0], losses[1])


@pytest.mark.parametrize("model", ["tiny-cogvideox", "tiny-wan"])
def test_distillation_trains_only_the_chosen_block_and_exports_a_pipeline(tmp_path: Path, model: str) -> None:
    steps: list[int] = []
    request = RetrainRequest(
        model=model, blocks=[-1], steps=30, lr=1e-3, checkpoint_every=10, out=tmp_path / "run", **SMALL
    )
    target = retrain(request, progress=lambda step, total, loss: steps.append(step))
    assert steps == list(range(1, 31)) and target == (tmp_path / "run" / "model").resolve()

    losses = json.loads((tmp_path / "run" / checkpoint.STATE).read_text())["losses"]
    assert len(losses) == 30 and all(np.isfinite(losses))
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10]), losses  # measured ratio 0.33-0.57
    assert (tmp_path / "run" / "loss.png").read_bytes()[:4] == b"\x89PNG"

    source = tiny_model_dir(model)
    before, after = _state_dict(source, "transformer"), _state_dict(target, "transformer")
    assert before.keys() == after.keys()
    last = "blocks.3." if model == "tiny-wan" else "transformer_blocks.3."
    changed = [key for key in before if not torch.equal(before[key], after[key])]
    assert changed and all(key.startswith(last) for key in changed)
    assert sum(key.startswith(last) for key in changed) >= 0.9 * sum(key.startswith(last) for key in before)
    text_before, text_after = _state_dict(source, "text_encoder"), _state_dict(target, "text_encoder")
    assert all(torch.equal(text_before[key], text_after[key]) for key in text_before)

    info = json.loads((target / "vditscope.json").read_text())
    assert info["vocabulary"] == json.loads((source / "vditscope.json").read_text())["vocabulary"]
    retrained = info["retrained"]
    assert (retrained["blocks"], retrained["mode"], retrained["steps"]) == ([3], "distill", 30)
    assert retrained["final_loss"] < retrained["initial_loss"]

    pipe, adapter, _ = load_pipeline(target)
    assert adapter.family == ("wan" if model == "tiny-wan" else "cogvideox")
    settings = {**info["generation"], "height": 16, "width": 16, "num_frames": 5, "num_inference_steps": 2}
    frames = pipe(
        prompt="a red square moving up on a gray background",
        generator=torch.Generator().manual_seed(0),
        output_type="np",
        **settings,
    ).frames[0]
    assert frames.shape == (5, 16, 16, 3) and np.isfinite(frames).all()


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path: Path) -> None:
    def request(out: Path, **changes: object) -> RetrainRequest:
        settings = {"model": "tiny-wan", "blocks": [-2, 3], "steps": 4, "lr": 1e-3, "checkpoint_every": 2}
        return RetrainRequest(out=out, **{**SMALL, **settings, **changes})  # type: ignore[arg-type]

    def stop_at_three(step: int, total: int, loss: float) -> None:
        if step == 3:
            raise Interrupt

    retrain(request(tmp_path / "straight"))
    with pytest.raises(Interrupt):
        retrain(request(tmp_path / "resumed"), progress=stop_at_three)
    assert json.loads((tmp_path / "resumed" / checkpoint.STATE).read_text())["step"] == 2
    assert not (tmp_path / "resumed" / "model").exists()
    retrain(request(tmp_path / "resumed"))

    straight = load_file(str(tmp_path / "straight" / checkpoint.CHECKPOINT))
    resumed = load_file(str(tmp_path / "resumed" / checkpoint.CHECKPOINT))
    assert straight.keys() == resumed.keys()
    assert any(key.startswith("optim/") for key in straight)
    assert {key.split(".")[1] for key in straight if key.startswith("model/")} == {"2", "3"}
    assert all(torch.equal(straight[key], resumed[key]) for key in straight)
    for run in ("straight", "resumed"):
        state = json.loads((tmp_path / run / checkpoint.STATE).read_text())
        assert state["step"] == 4 and state["run"]["blocks"] == [2, 3]
    a = _state_dict(tmp_path / "straight" / "model", "transformer")
    b = _state_dict(tmp_path / "resumed" / "model", "transformer")
    assert all(torch.equal(a[key], b[key]) for key in a)

    with pytest.raises(VditscopeError, match="other settings \\(lr\\)"):
        retrain(request(tmp_path / "resumed", lr=2e-3))


def test_bad_requests_are_one_clear_error_and_write_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    for blocks in ([4], [-5]):
        with pytest.raises(VditscopeError, match="the model has 4 blocks") as error:
            retrain(RetrainRequest(model="tiny-cogvideox", blocks=blocks, out=out, **SMALL))
        assert "\n" not in str(error.value)
    with pytest.raises(VditscopeError, match="unknown retraining mode"):
        retrain(RetrainRequest(mode="finetune", out=out, **SMALL))
    with pytest.raises(VditscopeError, match="flow mode needs"):
        retrain(RetrainRequest(mode="flow", out=out, **SMALL))
    with pytest.raises(VditscopeError, match="no such video folder"):
        retrain(RetrainRequest(mode="flow", data=tmp_path / "missing", out=out, **SMALL))
    (tmp_path / "empty").mkdir()
    with pytest.raises(VditscopeError, match="holds no training videos"):
        retrain(RetrainRequest(mode="flow", data=tmp_path / "empty", out=out, **SMALL))
    iio.imwrite(tmp_path / "empty" / "clip.gif", np.zeros((5, 8, 8, 3), np.uint8), extension=".gif")
    with pytest.raises(VditscopeError, match=r"has no caption file clip\.txt"):
        retrain(RetrainRequest(mode="flow", data=tmp_path / "empty", out=out, **SMALL))
    assert not out.exists()


def _write_clips(folder: Path) -> list[str]:
    """Two gifs and one mp4 of the shapes data (20 x 24 pixels, 7 frames) with their captions."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    specs = shapes.all_specs()[:3]
    for i, spec in enumerate(specs):
        video = shapes.render_clip(spec, frames=7, size=24, rng=rng)[:, 2:22]  # not square
        frames = list((video * 255).round().astype(np.uint8))
        if i < 2:
            iio.imwrite(folder / f"clip{i}.gif", frames, extension=".gif", duration=100, loop=0)
        else:
            imageio.mimwrite(folder / f"clip{i}.mp4", frames, format="FFMPEG", fps=8, macro_block_size=1)
        (folder / f"clip{i}.txt").write_text(spec.caption + "\n")
    return [spec.caption for spec in specs]


def test_flow_matching_on_a_folder_of_captioned_videos(tmp_path: Path) -> None:
    _write_clips(tmp_path / "videos")
    for name in ("clip0.gif", "clip2.mp4"):
        clip = read_clip(tmp_path / "videos" / name, 16, 16, 5)
        assert clip.shape == (3, 5, 16, 16) and clip.min() >= -1 and clip.max() <= 1
        assert clip.std() > 0.1  # a shape on a background, not a blank
    with pytest.raises(VditscopeError, match="has 7 frames; the model generates 9"):
        read_clip(tmp_path / "videos" / "clip1.gif", 16, 16, 9)

    out = tmp_path / "run"
    request = RetrainRequest(
        model="tiny-wan", mode="flow", data=tmp_path / "videos", blocks=[0], steps=3, lr=1e-3, out=out, **SMALL
    )
    target = retrain(request)
    state = json.loads((out / checkpoint.STATE).read_text())
    assert len(state["losses"]) == 3 and all(np.isfinite(state["losses"]))
    before, after = _state_dict(tiny_model_dir("tiny-wan"), "transformer"), _state_dict(target, "transformer")
    changed = [key for key in before if not torch.equal(before[key], after[key])]
    assert changed and all(key.startswith("blocks.0.") for key in changed)
    assert json.loads((target / "vditscope.json").read_text())["retrained"]["mode"] == "flow"
