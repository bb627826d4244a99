"""What the safety checks of issue 13 cost: the output policy's claim on --out, the vetting of a model
folder before loading, and how fast a refused command line returns (a fresh interpreter, as a user runs it).

Usage: python benchmarks/bench_safety_checks.py [--repeats 50]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import vditscope
from vditscope.adapters.loading import read_model_index
from vditscope.adapters.model_files import check_pipeline_weights, vet_pipeline_dir
from vditscope.analyses.analyze import RUN_FILES
from vditscope.store import OutputDir


def median_ms(work, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def earlier_output(root: Path, files: int) -> Path:
    """An analyze-like output with ``files`` files, written through the policy."""
    out = root / "run"
    with OutputDir(out, "analyze", files=("*",)) as output, output.staging() as staging:
        for i in range(files):
            (staging / f"file{i}.parquet").write_bytes(b"x" * 1000)
    return out


def cli_seconds(args: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "vditscope.cli", *args], cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as temp:
        root = Path(temp)
        for files in (10, 1000):
            out = earlier_output(root / f"n{files}", files)
            claim = median_ms(
                lambda out=out: OutputDir(out, "analyze", files=("*",)).__enter__().__exit__(None, None, None),
                args.repeats,
            )
            rows.append((f"claim an earlier output of {files} files (check + lock + release)", f"{claim:.2f} ms"))
        new = root / "fresh" / "run"
        rows.append(
            (
                "claim a new path",
                f"{median_ms(lambda: OutputDir(new, 'analyze', files=RUN_FILES).check(), args.repeats):.2f} ms",
            )
        )
        model = vditscope.tiny_model_dir("tiny-wan")
        index = read_model_index(model)
        rows.append(
            (
                "vet the shipped tiny-wan folder (files, JSON)",
                f"{median_ms(lambda: vet_pipeline_dir(model, index), args.repeats):.2f} ms",
            )
        )
        rows.append(
            (
                "config/weights agreement of tiny-wan (headers, meta device)",
                f"{median_ms(lambda: check_pipeline_weights(model, index), 5):.1f} ms",
            )
        )
        huge = root / "huge"
        shutil.copytree(model, huge)
        config = json.loads((huge / "transformer" / "config.json").read_text())
        (huge / "transformer" / "config.json").write_text(json.dumps({**config, "num_layers": 10000}))
        from vditscope.errors import VditscopeError

        def refused() -> None:
            try:
                check_pipeline_weights(huge, read_model_index(huge))
            except VditscopeError:
                return
            raise AssertionError("num_layers 10000 was not refused")

        rows.append(("refuse num_layers 10000 beside 4 blocks", f"{median_ms(refused, 5):.1f} ms"))
        (root / "mydata").mkdir()
        (root / "mydata" / "thesis.txt").write_text("mine")
        seconds = statistics.median(cli_seconds(["analyze", "--out", "mydata"], root) for _ in range(3))
        rows.append(("`vditscope analyze --out mydata` refused (interpreter start included)", f"{seconds:.2f} s"))
        seconds = statistics.median(cli_seconds(["analyze", "--seed", "0", "--seed", "0"], root) for _ in range(3))
        rows.append(("`vditscope analyze --seed 0 --seed 0` refused", f"{seconds:.2f} s"))
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import vditscope.cli"], check=True)
        rows.append(("for scale: `import vditscope.cli` alone", f"{time.perf_counter() - started:.2f} s"))
    width = max(len(name) for name, _ in rows)
    print(f"{'what':{width}s}  time")
    for name, value in rows:
        print(f"{name:{width}s}  {value}")


if __name__ == "__main__":
    main()
