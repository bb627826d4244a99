"""The command line's progress bar: a time left for slow units, and no '0/None' while loading."""

from __future__ import annotations

import os

from vditscope.cli import CountColumn, RemainingColumn, progress_bar
from vditscope.cli_options import VIDEO, free_cores, with_options


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def remaining(bar, column: RemainingColumn, task: int) -> str:
    return column.render(bar.tasks[task]).plain


def test_cells_slower_than_thirty_seconds_get_a_time_left() -> None:
    clock = FakeClock()
    bar = progress_bar(clock)
    column = next(c for c in bar.columns if isinstance(c, RemainingColumn))
    task = bar.add_task("cells", total=24)
    assert remaining(bar, column, task) == "-:--:--"  # nothing done yet
    for done in (1, 2, 3):
        clock.now += 40.0  # each cell takes 40 s: rich's own 30 s window never sees two samples
        bar.update(task, completed=done)
    assert remaining(bar, column, task) == "0:14:00"  # 21 cells left x 40 s


def test_cells_found_done_at_start_do_not_count_as_pace() -> None:
    clock = FakeClock()
    bar = progress_bar(clock)
    column = next(c for c in bar.columns if isinstance(c, RemainingColumn))
    task = bar.add_task("loading", total=None)
    assert remaining(bar, column, task) == "-:--:--"
    bar.update(task, description="cells", completed=12, total=24)  # a resumed sweep: 12 cells cached
    assert remaining(bar, column, task) == "-:--:--"
    clock.now += 50.0
    bar.update(task, completed=13)
    assert remaining(bar, column, task) == "0:09:10"  # 11 left x 50 s, not 11 x 50/13 s


def test_a_new_total_starts_a_new_estimate() -> None:
    clock = FakeClock()
    bar = progress_bar(clock)
    column = next(c for c in bar.columns if isinstance(c, RemainingColumn))
    task = bar.add_task("plain target", total=2)
    remaining(bar, column, task)
    clock.now += 100.0
    bar.update(task, completed=1)
    assert remaining(bar, column, task) == "0:01:40"
    bar.update(task, description="windows", completed=0, total=4)
    assert remaining(bar, column, task) == "-:--:--"
    clock.now += 10.0
    bar.update(task, completed=1)
    assert remaining(bar, column, task) == "0:00:30"


def test_the_count_is_blank_while_the_total_is_unknown() -> None:
    bar = progress_bar(FakeClock())
    task = bar.add_task("loading", total=None)
    assert CountColumn().render(bar.tasks[task]).plain == ""
    bar.update(task, total=8, completed=3)
    assert CountColumn().render(bar.tasks[task]).plain == "3/8"


def test_threads_default_to_the_free_cores() -> None:
    assert free_cores(2, 0.0) == 2
    assert free_cores(2, 1.0) == 1  # one other busy job on 2 cores: 1 thread, not 2
    assert free_cores(2, 7.5) == 1
    assert free_cores(16, 3.2) == 13


def test_threads_option_sets_torch_threads_for_the_command(monkeypatch) -> None:
    import torch
    import typer

    seen = []
    app = typer.Typer()

    @app.command()
    @with_options(VIDEO)
    def probe(*, options: dict) -> None:
        seen.append((options["threads"], torch.get_num_threads()))

    before = torch.get_num_threads()
    try:
        app(["--threads", "1"], standalone_mode=False)
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setattr(os, "getloadavg", lambda: (64.0, 64.0, 64.0))
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
        torch.set_num_threads(2)
        app([], standalone_mode=False)
    finally:
        torch.set_num_threads(before)
    assert seen == [(1, 1), (None, 1)]
