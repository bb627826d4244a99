"""Options that mean the same spell the same across commands (old spellings kept as aliases)."""

from __future__ import annotations

import pytest

from .in_process import run_main

SOURCE = "a red square moving right on a black background"
TARGET = "a blue square moving right on a black background"


@pytest.mark.parametrize("command", ["edit", "edit-sweep"])
@pytest.mark.parametrize("spelling", ["--edit-steps", "--steps-range"])
def test_transfer_steps_take_the_sweeps_spelling_and_the_old_one(
    command: str, spelling: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    argv = [
        command,
        "--source-prompt",
        SOURCE,
        "--target-prompt",
        TARGET,
        spelling,
        "4:2",
        "--out",
        str(tmp_path / "o"),
    ]
    code, err = run_main(argv, capsys, monkeypatch)
    assert code == 2 and "bad step range '4:2'" in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "command", ["analyze", "generate", "edit", "edit-sweep", "text-ablation", "sinks", "sweep sparsity"]
)
def test_every_generating_command_has_the_shared_options(command: str) -> None:
    from typer.main import get_command

    from vditscope.cli import app

    group = get_command(app)
    click_command = group
    for name in command.split():
        click_command = click_command.commands[name]  # type: ignore[attr-defined]
    names = {opt for param in click_command.params for opt in param.opts}
    shared = {"--model", "--out", "--steps", "--num-frames", "--height", "--width", "--device", "--dtype"}
    assert shared | {"--threads", "--overwrite", "--executor", "--address"} <= names
