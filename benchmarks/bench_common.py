"""Shared pieces of the benchmark scripts: the machine header, printing to the screen and a results file at once,
and interleaved timing (median of repeats after a warm-up)."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

import torch


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or platform's guess elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_lines(device: str) -> list[str]:
    """Header lines naming the machine: CPU model, cores, threads, load, torch (and GPU when used)."""
    load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    lines = [
        f"# {datetime.datetime.now().isoformat(timespec='seconds')} on {platform.node()}",
        f"# CPU {cpu_model()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, load average {load}",
        f"# torch {torch.__version__}, python {platform.python_version()}",
    ]
    if device.startswith("cuda") and torch.cuda.is_available():
        lines.append(f"# GPU {torch.cuda.get_device_name()}, CUDA {torch.version.cuda}")
    return lines


def resolve_device(device: str) -> str:
    """ "auto" -> cuda when available, else cpu."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def synchronize(device: str) -> None:
    """Wait for queued GPU work (a no-op on the CPU), so that wall-clock times are complete."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class Report:
    """Prints lines and, with a path, also appends them to that file as they come (a long run leaves a partial
    table behind if it is stopped)."""

    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path else None
        self._file: TextIO | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("w")

    def __call__(self, line: str = "") -> None:
        print(line, flush=True)
        if self._file is not None:
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> Report:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def timed(call: Callable[[], Any], device: str) -> tuple[float, Any]:
    """(seconds, result) of one call, synchronized on a GPU."""
    synchronize(device)
    start = time.perf_counter()
    result = call()
    synchronize(device)
    return time.perf_counter() - start, result


def interleaved(calls: dict[str, Callable[[], Any]], repeats: int, device: str) -> dict[str, float]:
    """Median seconds of each call over ``repeats`` rounds, the calls alternating within each round (drifting
    machine load then hits every call alike). Warm-up is the caller's business."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            times[name].append(timed(call, device)[0])
    return {name: statistics.median(values) for name, values in times.items()}
