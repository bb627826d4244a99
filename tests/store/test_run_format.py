"""The declared run format (store/run_format.py) is what the commands write: ``files_of(command)`` equals the
names each command passes to ``OutputDir(files=...)``, and every ``OutputDir`` in the package names a
declared command. Drift between the code and the format fails here."""

from __future__ import annotations

import ast
import fnmatch
import re
from pathlib import Path

import pytest

import vditscope
from vditscope.analyses.analyze import RUN_FILES
from vditscope.analyses.compare import COLUMNS, COMPARE_FILES
from vditscope.analyses.edit import EDIT_FILES, EDIT_SWEEP_FILES
from vditscope.analyses.generate import GENERATE_FILES
from vditscope.analyses.retrain_study import STUDY_FILES
from vditscope.analyses.sinks import SINKS_FILES
from vditscope.analyses.sweep import SWEEP_FILES
from vditscope.analyses.sweep import TABLE_COLUMNS as SWEEP_TABLE
from vditscope.analyses.text_ablation import TEXT_ABLATION_FILES
from vditscope.capture import TABLE_COLUMNS as CAPTURE_TABLE
from vditscope.store import FORMATS, OutputDir, files_of, run_format
from vditscope.store.run_format import COMPARE_COLUMNS, KINDS, STATS_COLUMNS, SWEEP_COLUMNS
from vditscope.training import tiny_lm
from vditscope.training.retrain import RETRAIN_FILES
from vditscope.training.tiny import TRAIN_FILES

PACKAGE = Path(vditscope.__file__).parent

CURRENT = {  # command -> what its module passes to OutputDir(files=...) today
    "analyze": RUN_FILES,
    "sweep sparsity": SWEEP_FILES,
    "sweep temperature": SWEEP_FILES,
    "edit": EDIT_FILES,
    "edit-sweep": EDIT_SWEEP_FILES,
    "generate": GENERATE_FILES,
    "sinks": SINKS_FILES,
    "text-ablation": TEXT_ABLATION_FILES,
    "compare": COMPARE_FILES,
    "retrain": RETRAIN_FILES,
    "train-tiny": TRAIN_FILES,
    "train-tiny-lm": tuple(
        [tiny_lm.CHECKPOINT, tiny_lm.STATE, tiny_lm.TOKENIZER]
        + [f"{name}.tmp" for name in (tiny_lm.CHECKPOINT, tiny_lm.STATE, tiny_lm.TOKENIZER)]
    ),
    "render-clips": ("clip*.mp4", "clip*.txt"),
    "train-tiny export": ("*",),
    "train-tiny-lm export": ("*",),
    "retrain export": ("*",),
}


@pytest.mark.parametrize("command", sorted(CURRENT))
def test_files_of_is_what_each_command_claims(command: str) -> None:
    assert files_of(command) == tuple(CURRENT[command])


def test_every_declared_command_is_checked_and_the_study_stage_is_its_own() -> None:
    assert set(FORMATS) == set(CURRENT)
    assert files_of("retrain", stage="study") == STUDY_FILES
    assert files_of("analyze", stage="study") == ()


def test_the_format_is_consistent() -> None:
    for fmt in FORMATS.values():
        names = [spec.name for spec in fmt.files]
        assert len(names) == len(set(names)), fmt.command
        for spec in fmt.files:
            assert spec.kind in KINDS and spec.holds, (fmt.command, spec.name)
            assert fnmatch.fnmatchcase(spec.name, spec.glob), (fmt.command, spec.name)  # its claim covers it
            assert not spec.columns or spec.kind == "table"
            assert not spec.tensors or spec.kind == "tensors"
        assert fmt.info is None or fmt.spec(fmt.info) is not None, fmt.command
        assert not fmt.recognized or fmt.info is not None, fmt.command  # an unmarked run is known by its info
        assert fmt.main_table is None or fmt.spec(fmt.main_table).kind == "table", fmt.command
    # the contract tables (DESIGN.md) and the columns the code writes
    assert set(STATS_COLUMNS) - {"prompt", "seed"} <= set(CAPTURE_TABLE)
    assert set(SWEEP_COLUMNS) <= set(SWEEP_TABLE)
    assert list(COMPARE_COLUMNS) == COLUMNS
    assert run_format("sinks").spec("sinks.parquet").columns == ("layer", "head", "token_index", "token",
                                                                  "received", "ratio")  # fmt: skip
    assert run_format("edit").spec("frames.safetensors").tensors == ("source", "target", "edited")
    assert run_format("sinks").spec("lm_sink_where.parquet").glob == "lm_sink*.parquet"


def test_unknown_command_and_output_dir_default(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no declared run format for command 'demo'"):
        files_of("demo")
    with pytest.raises(ValueError, match="'demo'"):
        OutputDir(tmp_path / "out", "demo")
    assert OutputDir(tmp_path / "out", "sinks").files == SINKS_FILES
    assert OutputDir(tmp_path / "out", "sinks", files=("x",)).files == ("x",)


def _output_dir_calls() -> list[tuple[str, ast.Call]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
                if name == "OutputDir":
                    found.append((path.relative_to(PACKAGE).as_posix(), node))
    return found


def _commands_named(node: ast.expr) -> list[str] | None:
    """The declared commands a command argument can name (None: computed, not checkable here)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        pattern = "".join(re.escape(v.value) if isinstance(v, ast.Constant) else ".+" for v in node.values)
        return [command for command in FORMATS if re.fullmatch(pattern, command)]
    return None


def test_every_output_dir_in_the_package_names_a_declared_command() -> None:
    calls = _output_dir_calls()
    assert len(calls) >= 12  # the check sees the commands (a refactor that hides them must update it)
    for where, call in calls:
        argument = call.args[1] if len(call.args) > 1 else next(k.value for k in call.keywords if k.arg == "command")
        commands = _commands_named(argument)
        if commands is None:
            continue
        assert commands, f"{where}: OutputDir for {ast.unparse(argument)}, which store/run_format.py does not declare"
        files = next((k.value for k in call.keywords if k.arg == "files"), None)
        if isinstance(files, ast.Tuple) and all(isinstance(e, ast.Constant) for e in files.elts):
            literal = tuple(e.value for e in files.elts)
            for command in commands:
                assert literal == files_of(command), f"{where}: {command} claims {literal}, not {files_of(command)}"
