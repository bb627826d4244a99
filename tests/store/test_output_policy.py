"""The output policy (issue 13): --out is new, an empty folder, or an earlier output of the same command;
anything else is refused in one line before any work, and nothing vditscope did not write is ever removed."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vditscope
from vditscope.store import OutputDir, OutputError, checked_output_file, sibling

from ..in_process import run_main as cli

FILES = ("report.html", "data.parquet", "sub")


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` (and ``root`` itself) with its kind and, for files, a hash of its bytes."""
    found: dict[str, str] = {}
    if root.is_symlink():
        return {".": f"link:{os.readlink(root)}"}
    if root.is_file():
        return {".": "file:" + hashlib.sha256(root.read_bytes()).hexdigest()}
    if not root.exists():
        return {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            found[rel] = f"link:{os.readlink(path)}"
        elif path.is_dir():
            found[rel] = "dir"
        else:
            found[rel] = "file:" + hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def write_run(out: Path, *, overwrite: bool = False, text: str = "new", command: str = "demo") -> Path:
    with OutputDir(out, command, files=FILES, overwrite=overwrite) as output, output.staging() as staging:
        (staging / "report.html").write_text(text)
        (staging / "sub").mkdir()
        (staging / "sub" / "table.parquet").write_text(text)
    return output.path


# ---- the policy on its own ------------------------------------------------------------------------------
def test_new_then_replaced_and_marked(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b" / "run"
    write_run(out, text="one")
    marker = json.loads((out / ".vditscope-demo.json").read_text())
    assert marker["command"] == "demo" and "report.html" in marker["files"] and "sub/table.parquet" in marker["files"]
    write_run(out, text="two")
    assert (out / "report.html").read_text() == "two"
    assert sorted(p.name for p in tmp_path.joinpath("a", "b").iterdir()) == ["run"]  # no lock, staging or old dir


def test_foreign_folder_is_refused_unchanged(tmp_path: Path) -> None:
    out = tmp_path / "mydata"
    out.mkdir()
    (out / "thesis.txt").write_text("years of work")
    before = snapshot(tmp_path)
    with pytest.raises(OutputError, match="--overwrite"):
        write_run(out)
    assert snapshot(tmp_path) == before


def test_overwrite_writes_beside_and_never_replaces_a_foreign_file(tmp_path: Path) -> None:
    out = tmp_path / "mydata"
    out.mkdir()
    (out / "thesis.txt").write_text("years of work")
    write_run(out, overwrite=True, text="one")
    assert (out / "thesis.txt").read_text() == "years of work" and (out / "report.html").read_text() == "one"
    write_run(out, overwrite=True, text="two")  # its own earlier files are replaced
    assert (out / "thesis.txt").read_text() == "years of work" and (out / "report.html").read_text() == "two"
    with pytest.raises(OutputError, match="--overwrite"):  # without the flag: still not a pure earlier output
        write_run(out)
    clash = tmp_path / "clash"
    clash.mkdir()
    (clash / "report.html").write_text("mine")
    with pytest.raises(OutputError, match="never replaces your files"):
        write_run(clash, overwrite=True)
    assert (clash / "report.html").read_text() == "mine"


def test_earlier_output_with_a_user_file_added_keeps_it(tmp_path: Path) -> None:
    out = write_run(tmp_path / "run")
    (out / "notes.md").write_text("mine")
    with pytest.raises(OutputError, match=r"now also holds notes\.md"):
        write_run(out)
    write_run(out, overwrite=True, text="again")
    assert (out / "notes.md").read_text() == "mine" and (out / "report.html").read_text() == "again"


def test_another_commands_output_is_not_this_ones(tmp_path: Path) -> None:
    out = write_run(tmp_path / "run", command="analyze")
    with pytest.raises(OutputError, match="not an earlier output of `vditscope compare`"):
        write_run(out, command="compare")


@pytest.mark.parametrize("kind", ["file", "link", "cwd", "parent-is-file", "input", "inside-input", "above-input"])
def test_refusals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    model = tmp_path / "model"
    (model / "transformer").mkdir(parents=True)
    (model / "transformer" / "weights.safetensors").write_bytes(b"weights")
    (tmp_path / "results.csv").write_text("a,b\n")
    (tmp_path / "target").mkdir()
    (tmp_path / "target" / "keep.txt").write_text("keep")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    monkeypatch.chdir(tmp_path / "target")
    out = {
        "file": tmp_path / "results.csv",
        "link": tmp_path / "link",
        "cwd": Path("."),
        "parent-is-file": tmp_path / "results.csv" / "run",
        "input": model,
        "inside-input": model / "transformer",
        "above-input": tmp_path,
    }[kind]
    before = snapshot(tmp_path)
    with (
        pytest.raises(OutputError),
        OutputDir(out, "demo", files=FILES, inputs=[model]) as output,
        output.staging() as staging,
    ):
        (staging / "report.html").write_text("x")
    assert snapshot(tmp_path) == before


def test_refusal_even_with_overwrite_for_inputs_and_files(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    for out in (model, tmp_path / "model" / "config.json"):
        with pytest.raises(OutputError):
            OutputDir(out, "demo", files=FILES, inputs=[model], overwrite=True).check()


def test_second_concurrent_run_refuses_at_once(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with (
        OutputDir(out, "demo", files=FILES),
        pytest.raises(OutputError, match="another vditscope run is writing"),
        OutputDir(out, "demo", files=FILES),
    ):
        pass
    write_run(out)  # the lock is gone with the first run
    assert not sibling(out.resolve(), "lock").exists()


def test_long_names_keep_hidden_siblings_within_the_limit(tmp_path: Path) -> None:
    out = tmp_path / ("x" * 245)
    write_run(out)
    assert (out / "report.html").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]
    assert len(sibling(out, "generations").name) <= 255 and len(sibling(out, "partial-", reserve=8).name) <= 247
    with pytest.raises(OutputError, match="too long"):
        OutputDir(tmp_path / ("y" * 300), "demo", files=FILES).check()


def test_leftover_staging_of_killed_runs_is_removed_after_success(tmp_path: Path) -> None:
    out = tmp_path / "run"
    killed = tmp_path / ".run.partial-abcd1234"
    killed.mkdir(mode=0o700)
    (killed / ".vditscope-staging").touch()
    (killed / "stats.parquet").write_text("half")
    empty = tmp_path / ".run.partial-empty000"
    empty.mkdir()
    foreign = tmp_path / ".run.partial-yours"
    foreign.mkdir()
    (foreign / "yours.txt").write_text("mine")
    write_run(out)
    assert not killed.exists() and not empty.exists()
    assert (foreign / "yours.txt").read_text() == "mine"


def test_bad_input_after_the_claim_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "new" / "deeper" / "run"
    with pytest.raises(ValueError), OutputDir(out, "demo", files=FILES, resumable=True) as output:
        output.open()
        raise ValueError("a layer out of range, found after the model loaded")
    assert list(tmp_path.iterdir()) == []


def test_disk_full_while_writing_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with (
        pytest.raises(OutputError, match="no space left") as info,
        OutputDir(out, "demo", files=FILES) as output,
        output.staging() as staging,
    ):
        (staging / "report.html").write_text("x")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(staging / "maps.safetensors"))
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_parent_is_refused_before_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(OutputError, match=r"cannot write in .*Permission denied"):
        OutputDir(tmp_path / "run", "demo", files=FILES).check()


def test_single_output_file(tmp_path: Path) -> None:
    mine = tmp_path / "results.json"
    mine.write_text('{"a": 1}')
    with pytest.raises(OutputError, match="not written by"):
        checked_output_file(mine, "eval-tiny")
    with pytest.raises(OutputError, match="folder"):
        checked_output_file(tmp_path, "eval-tiny")
    ours = tmp_path / "eval.json"
    ours.write_text(json.dumps({"written_by": "vditscope eval-tiny"}))
    assert checked_output_file(ours, "eval-tiny") == ours


# ---- property: random trees at --out ---------------------------------------------------------------------
NAMES = st.sampled_from(["report.html", "notes.md", "sub", "data.parquet", ".hidden", "run.json", "x"])
TREES = st.recursive(
    st.binary(max_size=8),
    lambda children: st.dictionaries(NAMES, children, max_size=3),
    max_leaves=6,
)


def build(path: Path, tree: bytes | dict) -> None:
    if isinstance(tree, bytes):
        path.write_bytes(tree)
        return
    path.mkdir()
    for name, child in tree.items():
        build(path / name, child)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=TREES, earlier=st.booleans(), overwrite=st.booleans())
def test_random_trees_are_refused_untouched_or_replaced_only_when_ours(
    tmp_path_factory: pytest.TempPathFactory, tree: bytes | dict, earlier: bool, overwrite: bool
) -> None:
    root = tmp_path_factory.mktemp("tree")
    out = root / "out"
    (root / "beside.txt").write_text("beside")
    if earlier:
        write_run(out, text="old")
        if isinstance(tree, dict):  # the user adds things to an earlier output
            for name, child in tree.items():
                if not (out / name).exists():
                    build(out / name, child)
    else:
        build(out, tree)
    before = snapshot(out)
    foreign = {k: v for k, v in before.items() if not k.startswith((".vditscope-", "report.html", "sub"))}
    try:
        write_run(out, text="new", overwrite=overwrite)
    except OutputError:
        assert snapshot(out) == before  # refused: not a byte changed
    else:
        after = snapshot(out)
        assert (out / "report.html").read_text() == "new"
        for rel, kind in foreign.items():  # everything of the user's is still there, unchanged
            assert after.get(rel) == kind, rel
    assert (root / "beside.txt").read_text() == "beside"
    assert sorted(p.name for p in root.iterdir()) == ["beside.txt", "out"]


# ---- every command, through the command line ---------------------------------------------------------------


def command_lines(out: str, model: Path, runs: tuple[Path, Path]) -> dict[str, list[str]]:
    m = ["--model", str(model)]
    return {
        "analyze": ["analyze", *m, "--out", out],
        "sweep sparsity": ["sweep", "sparsity", *m, "--out", out],
        "sweep temperature": ["sweep", "temperature", *m, "--out", out],
        "generate": ["generate", *m, "--out", out],
        "edit": ["edit", "--source-prompt", "a", "--target-prompt", "b", *m, "--out", out],
        "edit-sweep": ["edit-sweep", "--source-prompt", "a", "--target-prompt", "b", *m, "--out", out],
        "text-ablation": ["text-ablation", *m, "--out", out],
        "sinks": ["sinks", *m, "--out", out],
        "compare": ["compare", str(runs[0]), str(runs[1]), "--out", out],
        "train-tiny": ["train-tiny", "--out", out, "--steps", "1"],
        "train-tiny-lm": ["train-tiny-lm", "--out", out, "--steps", "1"],
        "render-clips": ["render-clips", "--out", out, "--count", "1"],
        "retrain": ["retrain", *m, "--out", out],
    }


@pytest.fixture(scope="module")
def model_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("models") / "tiny-wan"
    shutil.copytree(vditscope.tiny_model_dir(), target)
    return target


@pytest.mark.parametrize(
    "command",
    ["analyze", "sweep sparsity", "sweep temperature", "generate", "edit", "edit-sweep", "text-ablation", "sinks",
     "compare", "train-tiny", "train-tiny-lm", "render-clips", "retrain"],
)  # fmt: skip
@pytest.mark.parametrize("place", ["user-folder", "file", "cwd", "model", "inside-model", "link"])
def test_every_command_refuses_in_one_line_and_touches_nothing(
    tmp_path: Path,
    model_copy: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    command: str,
    place: str,
) -> None:
    work = tmp_path / "work"
    (work / "mydata").mkdir(parents=True)
    (work / "mydata" / "thesis.txt").write_text("years of work")
    (work / "results.csv").write_text("a,b\n")
    (work / "link").symlink_to(work / "mydata")
    runs = (work / "runA", work / "runB")
    for run in runs:
        run.mkdir()
        (run / "run.json").write_text("{}")
    monkeypatch.chdir(work)
    out = {
        "user-folder": "mydata",
        "file": "results.csv",
        "cwd": ".",
        "model": str(model_copy),
        "inside-model": str(model_copy / "transformer"),
        "link": "link",
    }[place]
    if command == "compare" and place in ("model", "inside-model"):
        out = str(runs[0])  # compare's inputs are the two runs
    before, model_before = snapshot(work), snapshot(model_copy)
    code, err = cli(command_lines(out, model_copy, runs)[command], capsys, monkeypatch)
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert snapshot(work) == before and snapshot(model_copy) == model_before


def test_eval_tiny_json_refuses_a_folder_and_a_foreign_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "results.json").write_text('{"mine": true}')
    before = snapshot(tmp_path)
    for target in (tmp_path, tmp_path / "results.json"):
        code, err = cli(["eval-tiny", "--count", "1", "--json", str(target)], capsys, monkeypatch)
        assert code == 2 and err.count("\n") == 1, err
    assert snapshot(tmp_path) == before


def test_render_clips_replaces_its_own_output_and_keeps_siblings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mine.txt").write_text("mine")
    out = tmp_path / "clips"
    assert cli(["render-clips", "--out", str(out), "--count", "2"], capsys, monkeypatch)[0] == 0
    assert sorted(p.name for p in out.iterdir()) == [
        ".vditscope-render-clips.json", "clip0000.mp4", "clip0000.txt", "clip0001.mp4", "clip0001.txt",
    ]  # fmt: skip
    assert cli(["render-clips", "--out", str(out), "--count", "1"], capsys, monkeypatch)[0] == 0
    assert sorted(p.name for p in out.iterdir()) == [".vditscope-render-clips.json", "clip0000.mp4", "clip0000.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clips", "mine.txt"]


def test_fs_error_outside_the_policy_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from vditscope import cli as cli_module

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "clips"))

    monkeypatch.setattr("vditscope.training.clips.write_shape_clips", broken)
    assert cli_module  # the command imports write_shape_clips at call time
    code, err = cli(["render-clips", "--out", str(tmp_path / "clips"), "--count", "1"], capsys, monkeypatch)
    assert code == 2 and err == f"error: Read-only file system: {tmp_path / 'clips'}\n"


def test_too_little_free_space_is_refused_before_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**30, 2**30 - 2**20, 2**20))
    with pytest.raises(OutputError, match=r"not enough free space .* 64 MiB needed, 1 MiB free"):
        OutputDir(tmp_path / "run", "demo", files=FILES, expected_bytes=64 * 2**20).check()
    assert list(tmp_path.iterdir()) == []


COMMANDS = sorted(command_lines("OUT", Path("M"), (Path("A"), Path("B"))))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=st.dictionaries(NAMES, TREES, min_size=1, max_size=3), command=st.sampled_from(COMMANDS))
def test_every_command_on_random_trees_refuses_without_changing_a_byte(
    tmp_path_factory: pytest.TempPathFactory,
    model_copy: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tree: dict,
    command: str,
) -> None:
    root = tmp_path_factory.mktemp("cli-tree")
    build(root / "out", tree)
    runs = (root / "runA", root / "runB")
    for run in runs:
        run.mkdir()
    before, model_before = snapshot(root), snapshot(model_copy)
    code, err = cli(command_lines(str(root / "out"), model_copy, runs)[command], capsys, monkeypatch)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert snapshot(root) == before and snapshot(model_copy) == model_before


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(added=st.dictionaries(st.sampled_from(["notes.md", "clip0005.mp4", "sub", "clip0000.txt"]), TREES, max_size=2))
def test_an_earlier_output_is_replaced_only_where_it_is_ours(
    tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    added: dict,
) -> None:
    root = tmp_path_factory.mktemp("earlier")
    out = root / "clips"
    assert cli(["render-clips", "--out", str(out), "--count", "1"], capsys, monkeypatch)[0] == 0
    ours = snapshot(out)
    for name, child in added.items():
        target = out / name
        if target.is_file():
            target.unlink()  # the user replaced one of the tool's files with their own
        build(target, child)
    before = snapshot(out)
    code, err = cli(["render-clips", "--out", str(out), "--count", "2", "--seed", "1"], capsys, monkeypatch)
    if added:
        assert code == 2 and err.count("\n") == 1 and snapshot(out) == before  # not purely ours any more
    else:
        assert code == 0 and snapshot(out) != ours and (out / "clip0001.mp4").is_file()
    assert sorted(p.name for p in root.iterdir()) == ["clips"]


def test_a_forged_marker_cannot_reach_outside_the_output(tmp_path: Path) -> None:
    precious = tmp_path / "precious.txt"
    precious.write_text("mine")
    out = write_run(tmp_path / "run")
    marker = out / ".vditscope-demo.json"
    data = json.loads(marker.read_text())
    info = precious.lstat()
    data["files"]["../precious.txt"] = [info.st_size, info.st_mtime_ns]
    data["files"][str(precious)] = [info.st_size, info.st_mtime_ns]
    marker.write_text(json.dumps(data))
    (out / "notes.md").write_text("the user's")  # so that the next run merges file by file
    write_run(out, overwrite=True, text="again")
    assert precious.read_text() == "mine" and (out / "notes.md").read_text() == "the user's"


def test_a_resumable_run_that_fails_before_writing_leaves_an_empty_folder_empty(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    out.mkdir()
    with pytest.raises(ValueError), OutputDir(out, "demo", files=FILES, resumable=True) as output:
        output.open()
        raise ValueError("a head index out of range")
    assert out.is_dir() and list(out.iterdir()) == []
