"""Checks before work (issue 13, items 7, 9, 11, 12): every check that the options, the model config and
the output path allow runs before anything is generated, and fails in one line with nothing written."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from vditscope.analyses.analyze import recorded_generation
from vditscope.analyses.sweep import PLAN_VERSION

from .in_process import run_main as cli


@pytest.fixture
def no_generation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any generation fails the test: the check must come first."""

    def generated(*args: object, **kwargs: object) -> None:
        raise AssertionError("a generation ran before the check")

    monkeypatch.setattr("vditscope.adapters.loaded.generate", generated)  # every LoadedPipeline.generate call
    monkeypatch.setattr("vditscope.analyses.captured.CaptureJob.__call__", generated)  # analyze's generations


SMALL = ["--steps", "2", "--num-frames", "5"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sweep", "sparsity", "--k", "0.5,0.5", *SMALL], "--k 0.5 is given twice"),
        (["sweep", "sparsity", "--seed", "0", "--seed", "0", *SMALL], "--seed 0 is given twice"),
        (["sweep", "temperature", "--tau", "2", "--tau", "2", *SMALL], "--tau 2.0 is given twice"),
        (["sweep", "sparsity", "--prompt", "a", "--prompt", "a", *SMALL], "--prompt a is given twice"),
        (["analyze", "--seed", "0", "--seed", "0", *SMALL], "--seed 0 is given twice"),
        (["analyze", "--seed", str(2**70), *SMALL], "--seed 1180591620717411303424 is out of range"),
        (["generate", "--seed", "-1", *SMALL], "--seed -1 is out of range"),
        (["analyze", "--capture-steps", "99", *SMALL], "step 99 is out of range: the schedule has 2 steps"),
        (["sinks", "--ablation-layers", "9", *SMALL], "layer 9 is out of range: the model has 4 layers"),
        (["sinks", "--capture-steps", "5", *SMALL], "step 5 is out of range"),
        (["retrain", "--lr", "inf", "--train-steps", "1"], "the learning rate must be a positive number, got inf"),
        (["retrain", "--lr", "nan", "--train-steps", "1"], "the learning rate must be a positive number, got nan"),
    ],
)
def test_bad_options_fail_before_any_generation(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    no_generation: None,
    args: list[str],
    message: str,
) -> None:
    out = tmp_path / "out"
    code, err = cli([*args, "--out", str(out)], capsys, monkeypatch)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a lock or a parent


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"bottom_k": 0.5, "steps": [0, 40]}, "the plan edits steps 0:40, but the schedule has 2 steps"),
        ({"bottom_k": 0.5, "layers": [9]}, "the plan edits layer 9, but the model has 4 layers"),
        ({"bottom_k": 0.5, "heads": [7]}, "the plan edits head 7, but the model has 4 heads"),
        ({"bottom_k": 1.5}, "is not a valid sparsity plan"),
    ],
)
def test_a_bad_plan_fails_before_any_generation(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    no_generation: None,
    edit: dict,
    message: str,
) -> None:
    plan = tmp_path / "plan" / "plan.json"
    plan.parent.mkdir()
    plan.write_text(json.dumps({"vditscope_plan": PLAN_VERSION, "edits": [edit]}))
    for command in ("analyze", "generate"):
        out = tmp_path / command
        started = time.perf_counter()
        code, err = cli([command, "--plan", str(plan), *SMALL, "--out", str(out)], capsys, monkeypatch)
        assert code == 2 and err.count("\n") == 1 and message in err, err
        assert time.perf_counter() - started < 60 and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan"]


def test_a_second_run_on_the_same_out_refuses_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, no_generation: None
) -> None:
    from vditscope.analyses.analyze import RUN_FILES
    from vditscope.store import OutputDir

    out = tmp_path / "run"
    with OutputDir(out, "analyze", files=RUN_FILES):  # the first run, still working
        code, err = cli(["analyze", *SMALL, "--out", str(out)], capsys, monkeypatch)
        assert code == 2 and "another vditscope run is writing" in err and err.count("\n") == 1
        code, err = cli(["sweep", "sparsity", *SMALL, "--out", str(out)], capsys, monkeypatch)
        assert code == 2 and "another vditscope run is writing" in err
    assert list(tmp_path.iterdir()) == []


def test_rounded_frame_counts_are_recorded_as_generated() -> None:
    notes: list[str] = []
    asked = {"num_frames": 2, "height": 32}
    assert recorded_generation(asked, 3, notes) == {"num_frames": 3, "num_frames_requested": 2, "height": 32}
    assert notes and "3 frames for num_frames 2" in notes[0]
    assert recorded_generation({"num_frames": 5}, 5, []) == {"num_frames": 5}


def test_the_schedule_is_known_from_the_pipeline_when_the_model_does_not_say(tmp_path: Path) -> None:
    import shutil

    import vditscope
    from vditscope.analyses.analyze import model_settings

    model = tmp_path / "model"
    shutil.copytree(vditscope.tiny_model_dir(), model)
    settings = json.loads((model / "vditscope.json").read_text())
    del settings["generation"]["num_inference_steps"]
    (model / "vditscope.json").write_text(json.dumps(settings))
    generation = model_settings(model)["generation"]
    assert generation["num_inference_steps"] == 50  # WanPipeline's own default
    assert generation["height"] == settings["generation"]["height"]  # the model's settings win
