"""Executors: a local Ray cluster (started here, 2 CPUs) computes the same sweep table and the same
analysis statistics as the in-process executor; a worker killed mid-sweep loses and duplicates no
cell; a driver killed mid-sweep and rerun finishes with the same table; bad --executor/--address
input gives one line, exit code 2 and writes nothing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from safetensors.torch import load_file

from vditscope.analyses.analyze import AnalyzeRequest, run_analyze
from vditscope.analyses.captured import CaptureCache
from vditscope.analyses.sweep import SweepRequest, run_sweep

SMALL = {"num_frames": 9, "num_inference_steps": 2, "height": 32, "width": 32}
SMALL_ARGS = ["--num-frames", "9", "--steps", "2", "--height", "32", "--width", "32"]
PROMPTS = ("a red square moving left on a black background", "a blue circle moving up on a white background")
SWEEP_ARGS = ["--per-layer", "--k", "0.3,0.6", "--layers", "1,2", "--prompt", PROMPTS[0], "--seed", "0"]


def sweep_request(out: Path) -> SweepRequest:
    """The sweep of SWEEP_ARGS: 4 cells (2 layers x 2 levels) on one prompt and seed."""
    return SweepRequest(
        mode="sparsity", scope="per-layer", levels=(0.3, 0.6), layers=(1, 2), prompts=PROMPTS[:1], seeds=(0,),
        out=out, device="cpu", **SMALL,
    )  # fmt: skip


def analyze_request(out: Path) -> AnalyzeRequest:
    return AnalyzeRequest(prompts=PROMPTS, seeds=(0,), out=out, map_tiles=32, device="cpu", **SMALL)


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    out = run_sweep(sweep_request(tmp_path_factory.mktemp("local") / "sweep"))
    assert json.loads((out / "sweep.json").read_text())["executor"] == "local"
    return pd.read_parquet(out / "sweep.parquet")


def ray_executor(**kwargs):
    from vditscope.executors.ray_cluster import RayExecutor

    class Watched(RayExecutor):
        """Keeps the pool it starts, so that a test can see (and kill) its workers."""

        def start(self, spec):
            self.pool = super().start(spec)
            return self.pool

    return Watched(max_workers=2, **kwargs)


def assert_same_stats(run: Path, reference: Path) -> None:
    pd.testing.assert_frame_equal(pd.read_parquet(run / "stats.parquet"), pd.read_parquet(reference / "stats.parquet"))


def cell_files(out: Path) -> list[Path]:
    return sorted((out / "cells").glob("*.json"))


@pytest.mark.ray
@pytest.mark.slow
def test_ray_sweep_gives_the_local_table(cluster: str, local_sweep: pd.DataFrame, tmp_path: Path) -> None:
    messages: list[str] = []
    executor = ray_executor()
    out = run_sweep(sweep_request(tmp_path / "sweep"), lambda m, d, t: messages.append(m), executor)
    pd.testing.assert_frame_equal(pd.read_parquet(out / "sweep.parquet"), local_sweep)
    meta = json.loads((out / "sweep.json").read_text())
    assert meta["executor"] == "ray" and meta["cells_computed"] == 4 and meta["retries"] == 0
    # 1 dense reference and 4 cells, spread over the workers
    workers = executor.pool.workers()
    assert sum(w.done for w in workers) == 5 and all(w.pid != os.getpid() for w in workers)
    last = messages[-2]  # then "writing the sweep table"
    assert last.startswith("cells 4/4") and "cells per worker: w1 " in last and "w2 " in last
    assert len(cell_files(out)) == 4


@pytest.mark.ray
@pytest.mark.slow
def test_a_killed_worker_loses_and_duplicates_nothing(cluster: str, local_sweep: pd.DataFrame, tmp_path: Path) -> None:
    executor = ray_executor()
    killed: list[int] = []

    def kill_a_busy_worker(message: str, done: int, total: int) -> None:
        if done == 1 and not killed:
            busy = [w for w in executor.pool.workers() if w.alive and w.running]
            assert busy, "a job should be running when the first cell lands"
            killed.append(busy[0].pid)
            os.kill(busy[0].pid, signal.SIGKILL)

    out = run_sweep(sweep_request(tmp_path / "sweep"), kill_a_busy_worker, executor)
    assert killed
    pd.testing.assert_frame_equal(pd.read_parquet(out / "sweep.parquet"), local_sweep)
    meta = json.loads((out / "sweep.json").read_text())
    assert meta["retries"] >= 1 and meta["cells_computed"] == 4 and meta["cells_reused"] == 0
    assert len(cell_files(out)) == 4 and not [p for p in (out / "cells").iterdir() if p.name.startswith(".")]
    lost = [w for w in executor.pool.workers() if w.pid == killed[0]]
    assert lost and not lost[0].alive and "lost" in meta["workers"]


@pytest.mark.ray
@pytest.mark.slow
def test_a_killed_driver_resumes_with_the_same_table(cluster: str, local_sweep: pd.DataFrame, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    command = [
        sys.executable, "-m", "vditscope.cli", "sweep", "sparsity", *SWEEP_ARGS, *SMALL_ARGS, "--device", "cpu",
        "--out", str(out), "--executor", "ray", "--address", cluster,
    ]  # fmt: skip
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and not cell_files(out) and driver.poll() is None:
        time.sleep(0.02)
    driver.send_signal(signal.SIGKILL)
    _, stderr = driver.communicate()
    finished = len(cell_files(out))
    assert 1 <= finished < 4, f"the kill should land mid-sweep ({finished} cells): {stderr.decode()[-2000:]}"
    assert not (out / "sweep.parquet").exists()

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    meta = json.loads((out / "sweep.json").read_text())
    assert meta["cells_reused"] == finished and meta["cells_computed"] == 4 - finished
    pd.testing.assert_frame_equal(pd.read_parquet(out / "sweep.parquet"), local_sweep)


@pytest.fixture(scope="module")
def local_analysis(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_analyze(analyze_request(tmp_path_factory.mktemp("local") / "analysis"))


@pytest.mark.ray
@pytest.mark.slow
def test_ray_analysis_gives_the_local_statistics(cluster: str, local_analysis: Path, tmp_path: Path) -> None:
    out = run_analyze(analyze_request(tmp_path / "analysis"), executor=ray_executor())
    assert_same_stats(out, local_analysis)
    ours, theirs = load_file(str(out / "maps.safetensors")), load_file(str(local_analysis / "maps.safetensors"))
    assert ours.keys() == theirs.keys() and all(ours[k].equal(theirs[k]) for k in ours)
    run, local_run = (json.loads((d / "run.json").read_text()) for d in (out, local_analysis))
    assert run["executor"] == "ray" and local_run["executor"] == "local"
    assert run["text_token_labels"] == local_run["text_token_labels"] and run["layout"] == local_run["layout"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_an_interrupted_analysis_computes_only_the_missing_generations(local_analysis: Path, tmp_path: Path) -> None:
    out = tmp_path / "analysis"

    def interrupt(message: str, done: int, total: int) -> None:
        if done == 1 and message.startswith("generations"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_analyze(analyze_request(out), interrupt)
    cache = CaptureCache(out)
    assert not out.exists() and len(list(cache.root.glob("*.safetensors"))) == 1

    messages: list[str] = []
    run_analyze(analyze_request(out), lambda m, d, t: messages.append(f"{m} {d}/{t}"))
    assert messages[0] == "generations 1/2 1/2", "the finished generation is reused, not computed again"
    assert_same_stats(out, local_analysis)
    assert not cache.root.exists()


def run_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    from vditscope.cli import main

    monkeypatch.setattr(sys, "argv", ["vditscope", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return int(exit_info.value.code or 0), capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--executor", "ray", "--address", "127.0.0.1:1"], "cannot reach a Ray cluster at 127.0.0.1:1"),
        (["--executor", "ray", "--address", "head-node"], "bad --address 'head-node'"),
        (["--executor", "dask"], "unknown executor 'dask'"),
        (["--address", "127.0.0.1:6379"], "--address goes with --executor ray"),
    ],
)
@pytest.mark.parametrize("command", [["sweep", "sparsity"], ["sweep", "temperature"], ["analyze"]])
def test_bad_executor_input_gives_one_line_and_writes_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path, command, args, message
) -> None:
    if "127.0.0.1:1" in args:
        pytest.importorskip("ray")
    code, stderr = run_main(monkeypatch, capsys, *command, *args, "--out", str(tmp_path / "out"))
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and message in lines[0], stderr
    assert "Traceback" not in stderr and not list(tmp_path.iterdir())


@pytest.mark.ray
@pytest.mark.slow
def test_a_model_that_fails_to_load_on_the_workers_gives_one_line(
    cluster: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    """The driver's checks pass (a Wan model_index.json), the workers' loading fails (no weights)."""
    from vditscope import tiny_model_dir

    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(tiny_model_dir() / "model_index.json", broken / "model_index.json")
    out = tmp_path / "out"
    code, stderr = run_main(
        monkeypatch, capsys, "sweep", "sparsity", "--model", str(broken), "--executor", "ray", "--out", str(out)
    )
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and f"could not load the pipeline in {broken}" in lines[0], stderr
    assert "Traceback" not in stderr and not out.exists()


def test_ray_executor_without_ray_installed(tmp_path: Path) -> None:
    """A `ray` that cannot be imported (as where the extra is not installed): one line, exit 2."""
    fake = tmp_path / "site" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise ImportError("No module named ray")\n')
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "vditscope.cli", "sweep", "sparsity", "--executor", "ray", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --executor ray needs Ray, which is not installed: pip install 'vditscope[ray]'"
    )
    assert "Traceback" not in result.stderr and not out.exists()


def test_importing_vditscope_and_running_locally_never_imports_ray() -> None:
    code = (
        "import sys, vditscope, vditscope.cli, vditscope.executors\n"
        "from vditscope.executors import executor_for\n"
        "executor_for('local')\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
