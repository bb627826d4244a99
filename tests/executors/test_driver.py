"""The one resumable driver on a fake pool: inputs computed once and shared, a resumed run computes only
what is missing, every result saved once and as soon as it arrives, a worker's error stops the run."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import pytest

from vditscope.errors import VditscopeError
from vditscope.executors import Job, JobPlan, run_jobs


@dataclass(frozen=True)
class Shared:
    """What FakePool.share hands out, so that a test sees that a job got the shared value."""

    value: Any


class FakePool:
    """Runs jobs in submission order when their results are asked for; can fail one job."""

    def __init__(self, capacity: int = 2, fail: str | None = None) -> None:
        self.capacity, self.retries, self.fail = capacity, 0, fail
        self.queue: deque[Job] = deque()
        self.ran: list[str] = []
        self.shared: list[Any] = []

    def share(self, value: Any) -> Shared:
        self.shared.append(value)
        return Shared(value)

    def submit(self, job: Job) -> None:
        assert len(self.queue) < self.capacity + 1, "the driver overfilled the pool"
        self.queue.append(job)

    def next_result(self) -> tuple[Job, Any]:
        job = self.queue.popleft()
        if job.key == self.fail:
            raise VditscopeError(f"worker error in {job.key}")
        self.ran.append(job.key)
        return job, job.task(None, *job.inputs)

    @property
    def pending(self) -> int:
        return len(self.queue)

    def worker_summary(self) -> str:
        return "cells per worker: w1 3"


class DictStore:
    """A result store in a dict that logs every save."""

    def __init__(self, saved: dict[str, Any] | None = None) -> None:
        self.saved = dict(saved or {})
        self.log: list[str] = []

    def has(self, key: str) -> bool:
        return key in self.saved

    def load(self, key: str) -> Any:
        return self.saved[key]

    def save(self, key: str, result: Any) -> None:
        assert key not in self.saved, f"{key} saved twice"
        self.saved[key] = result
        self.log.append(key)


def dense(seed: int):
    return lambda bench: {"dense": seed}


def cell(level: float):
    return lambda bench, shared: (level, shared.value["dense"])


def sweep_plan(store: DictStore, inputs: DictStore) -> JobPlan:
    """Two prompts' dense inputs, three cells each (the sweep's shape)."""
    jobs = [
        Job(f"c{seed}.{level}", cell(level), needs=(f"d{seed}",), label=f"level {level}")
        for seed in (0, 1)
        for level in (0.1, 0.2, 0.3)
    ]
    dense_jobs = {f"d{seed}": Job(f"d{seed}", dense(seed)) for seed in (0, 1)}
    return JobPlan(jobs, store, dense_jobs, inputs, noun="cells")


def test_inputs_run_once_and_are_shared_with_the_jobs_that_need_them() -> None:
    pool, store, inputs = FakePool(capacity=2), DictStore(), DictStore()
    messages: list[tuple[str, int, int]] = []
    finished = run_jobs(pool, sweep_plan(store, inputs), lambda *m: messages.append(m))
    assert finished.results == [(level, seed) for seed in (0, 1) for level in (0.1, 0.2, 0.3)]
    assert finished.reused == 0 and finished.computed == 6
    assert pool.ran.count("d0") == pool.ran.count("d1") == 1 and pool.ran.index("d0") < pool.ran.index("c0.0.1")
    assert pool.shared == [{"dense": 0}, {"dense": 1}] and sorted(inputs.log) == ["d0", "d1"]
    assert messages[0] == ("cells 0/6 | cells per worker: w1 3", 0, 6)
    assert messages[-1] == ("cells 6/6 level 0.3 | cells per worker: w1 3", 6, 6)
    assert [done for _, done, _ in messages] == list(range(7))


def test_a_rerun_after_a_failure_halfway_computes_only_what_is_missing() -> None:
    store, inputs = DictStore(), DictStore()
    with pytest.raises(VditscopeError, match=r"worker error in c1\.0\.2"):
        run_jobs(FakePool(capacity=1, fail="c1.0.2"), sweep_plan(store, inputs))
    assert store.log == ["c0.0.1", "c0.0.2", "c0.0.3", "c1.0.1"], "each result saved as soon as it arrived"
    pool = FakePool(capacity=1)
    finished = run_jobs(pool, sweep_plan(store, inputs))
    assert pool.ran == ["c1.0.2", "c1.0.3"], "d1 is loaded from its store, d0 not even opened"
    assert pool.shared == [{"dense": 1}]
    assert finished.reused == 4 and finished.computed == 2
    assert finished.results == [(level, seed) for seed in (0, 1) for level in (0.1, 0.2, 0.3)]
    assert len(store.log) == 6 and len(set(store.log)) == 6


def test_a_result_that_comes_back_twice_is_refused() -> None:
    class Twice(FakePool):
        def submit(self, job: Job) -> None:
            super().submit(job)
            if job.key == "a":
                self.queue.append(job)

    plan = JobPlan([Job("a", lambda bench: 1), Job("b", lambda bench: 2)], DictStore())
    with pytest.raises(VditscopeError, match="job a came back twice"):
        run_jobs(Twice(capacity=4), plan)


def test_a_plan_whose_jobs_need_an_unknown_input_is_refused() -> None:
    with pytest.raises(ValueError, match="no input job"):
        run_jobs(FakePool(), JobPlan([Job("a", lambda bench, x: x, needs=("missing",))]))
    with pytest.raises(ValueError, match="same key"):
        run_jobs(FakePool(), JobPlan([Job("a", lambda bench: 1), Job("a", lambda bench: 2)]))


def test_jobs_without_inputs_keep_their_order_and_fill_the_pool() -> None:
    pool = FakePool(capacity=3)
    submitted: list[int] = []
    original = pool.submit

    def watch(job: Job) -> None:
        original(job)
        submitted.append(pool.pending)

    pool.submit = watch  # type: ignore[method-assign]
    finished = run_jobs(pool, JobPlan([Job(str(i), lambda bench, i=i: i * i) for i in range(5)]))
    assert finished.results == [0, 1, 4, 9, 16] and max(submitted) == 3
