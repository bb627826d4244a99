"""Published checkpoints' facts and the real-shaped pipelines built from them; slow tests run the paper's
analyses end to end at real token counts (Wan2.1-1.3B width at 480x832, CogVideoX-2b width at 480x720)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd
import pytest

from tests.in_process import run_main
from vditscope.adapters.loading import load_pipeline
from vditscope.adapters.published import PUBLISHED, published_model
from vditscope.adapters.real_shaped import build_real_shaped, real_shaped_transformer
from vditscope.errors import VditscopeError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
PROMPT = "a red square moving left on a black background"
OTHER = "a blue circle moving up on a gray background"

# the sizes the model cards state (billions of parameters)
CARD_SIZES = {
    ("Wan2.1-T2V-1.3B", "transformer"): 1.3,
    ("Wan2.1-T2V-14B", "transformer"): 14.0,
    ("Wan2.1-T2V-1.3B", "text_encoder"): 5.7,  # umT5-XXL encoder
    ("HunyuanVideo", "transformer"): 13.0,
    ("Mochi-1-preview", "transformer"): 10.0,
    ("CogVideoX-2b", "transformer"): 2.0,
    ("CogVideoX-5b", "transformer"): 5.0,
    ("LTX-Video", "transformer"): 2.0,
}


@pytest.mark.parametrize(("name", "component"), sorted(CARD_SIZES))
def test_published_parameter_counts_match_the_model_cards(name: str, component: str) -> None:
    billions = PUBLISHED[name].parameters[component] / 1e9
    assert abs(billions - CARD_SIZES[name, component]) / CARD_SIZES[name, component] < 0.16, billions


def test_wan22_has_two_experts_and_published_names_resolve_by_repo() -> None:
    wan22 = published_model("wan-ai/wan2.2-t2v-a14b-diffusers")
    assert wan22.parameters["transformer_2"] == wan22.parameters["transformer"] > 14e9
    with pytest.raises(VditscopeError, match=r"unknown published model nope; choose one of Wan2\.1-T2V-1\.3B"):
        published_model("nope")


def test_real_shaped_transformer_has_the_published_width() -> None:
    model = real_shaped_transformer(published_model("HunyuanVideo"), layers=1)
    assert len(model.transformer_blocks) == len(model.single_transformer_blocks) == 1
    attn = model.transformer_blocks[0].attn
    assert attn.heads == 24 and attn.to_q.out_features == 3072


def test_building_refuses_a_folder_with_files_and_unbuilt_families(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep")
    with pytest.raises(VditscopeError, match="exists and is not an empty directory"):
        build_real_shaped("Wan2.1-T2V-1.3B", tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]
    with pytest.raises(VditscopeError, match="real-shaped pipelines are built for wan, cogvideox"):
        build_real_shaped("LTX-Video", tmp_path / "ltx")


def test_a_real_shaped_wan_pipeline_loads_with_real_widths(tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "wan"
    _cli(["real-shaped", "wan-ai/Wan2.1-T2V-1.3B-Diffusers", "--out", str(out), "--layers", "1"], capsys, monkeypatch)
    pipe, adapter, _ = load_pipeline(out)
    config = pipe.transformer.config
    assert adapter.family == "wan" and config.num_layers == 1
    assert (config.num_attention_heads, config.attention_head_dim, config.text_dim) == (12, 128, 4096)
    assert pipe.text_encoder.config.d_model == 4096 and type(pipe.vae).__name__ == "AutoencoderKLWan"
    assert type(pipe.scheduler).__name__ == "UniPCMultistepScheduler" and pipe.scheduler.config.flow_shift == 3.0
    settings = json.loads((out / "vditscope.json").read_text())
    assert settings["generation"]["height"] == 480 and settings["generation"]["width"] == 832
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pt"))


@pytest.fixture(scope="module")
def real_wan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Wan2.1-T2V-1.3B's shapes with 2 blocks: 480x832x5 frames is 2 x 30 x 52 = 3,120 video tokens."""
    return build_real_shaped("Wan2.1-T2V-1.3B", tmp_path_factory.mktemp("real") / "wan", layers=2)


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    code, err = run_main(argv, capsys, monkeypatch)
    assert code == 0, err


@pytest.mark.slow
def test_analyze_at_real_token_counts(real_wan, tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "analyze"
    _cli(["analyze", "--model", str(real_wan), "--out", str(out), "--prompt", PROMPT, "--seed", "0",
          "--map-tiles", "64"], capsys, monkeypatch)  # fmt: skip
    run = json.loads((out / "run.json").read_text())
    assert run["layout"]["grid"] == [2, 30, 52] and run["heads"] == 12
    stats = pd.read_parquet(out / "stats.parquet")
    self_rows = stats[stats.kind == "self"]
    assert set(self_rows.tokens) == {3120} and set(stats[stats.kind == "cross"].tokens) == {512}
    assert len(self_rows) == 2 * 2 * 2 * 12  # steps x branches x layers x heads
    assert ((self_rows.entropy > 0) & (self_rows.entropy <= math.log(3120) + 1e-4)).all()
    assert (out / "report.html").stat().st_size > 10_000


@pytest.mark.slow
def test_sweep_cell_edit_and_sinks_at_real_token_counts(real_wan, tmp_path, capsys, monkeypatch) -> None:
    one_step = ["--model", str(real_wan), "--steps", "1", "--seed", "0"]
    sweep = tmp_path / "sweep"
    _cli(["sweep", "sparsity", *one_step, "--prompt", PROMPT, "--method", "spatial", "--layers", "1",
          "--out", str(sweep)], capsys, monkeypatch)  # fmt: skip
    cells = pd.read_parquet(sweep / "sweep.parquet")
    edited = cells[cells.layer == 1] if "layer" in cells else cells
    assert len(edited) >= 1 and edited.psnr.notna().all() and (edited.psnr > 0).all()

    edit = tmp_path / "edit"
    _cli(["edit", *one_step, "--source-prompt", PROMPT, "--target-prompt", OTHER, "--layers", "0",
          "--out", str(edit)], capsys, monkeypatch)  # fmt: skip
    metrics = json.loads((edit / "metrics.json").read_text())
    assert metrics["edited_vs_source"]["psnr"] > metrics["target_vs_source"]["psnr"] - 1.0

    sinks = tmp_path / "sinks"
    _cli(["sinks", *one_step, "--prompt", PROMPT, "--ablation-layers", "1", "--out", str(sinks)], capsys, monkeypatch)
    run = json.loads((sinks / "run.json").read_text())
    assert run["layout"]["grid"] == [2, 30, 52]


@pytest.mark.slow
def test_capture_on_a_real_width_joint_attention_family(tmp_path, capsys, monkeypatch) -> None:
    model = build_real_shaped("CogVideoX-2b", tmp_path / "cog", layers=1)
    out = tmp_path / "analyze"
    _cli(["analyze", "--model", str(model), "--out", str(out), "--prompt", PROMPT, "--seed", "0", "--steps", "1",
          "--map-tiles", "64"], capsys, monkeypatch)  # fmt: skip
    run = json.loads((out / "run.json").read_text())
    # 9 frames -> 3 latent frames of 60 x 90 -> 3 x 30 x 45 video tokens after the 2 x 2 patch, 226 text tokens first
    assert run["layout"] == {"grid": [3, 30, 45], "text_tokens": 226, "text_position": "before"}
    stats = pd.read_parquet(out / "stats.parquet")
    assert set(stats.tokens) == {3 * 30 * 45 + 226} and set(stats["head"]) == set(range(30))
    assert ((stats.text_mass > 0) & (stats.text_mass < 1)).all()


def test_a_build_that_fails_while_saving_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    from diffusers import WanPipeline

    def fail_midway(self, directory, **kwargs) -> None:
        (Path(directory) / "model_index.json").write_text("{}")
        raise OSError("disk full")

    monkeypatch.setattr(WanPipeline, "save_pretrained", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        build_real_shaped("Wan2.1-T2V-1.3B", tmp_path / "wan", layers=1)
    assert list(tmp_path.iterdir()) == []
