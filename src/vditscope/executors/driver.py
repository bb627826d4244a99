"""The one resumable driver of every long command: it hands jobs to a pool a few at a time, keeps the
pool busy, feeds jobs the results of the jobs they need (shared once with ``Pool.share``), and saves
each new result in a store as soon as it arrives, in this process only. Results already in the store
are loaded, not computed again, so a command rerun after an interruption computes only what is missing.

The store is the command's (a folder of cell files, a hidden cache beside an atomic run directory):
this module writes nothing itself and needs no file format.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from ..errors import VditscopeError
from ..progress import ProgressFn
from .base import Job, Pool


class ResultStore(Protocol):
    """Where finished results live between runs; ``save`` must be atomic (a result is there whole or not)."""

    def has(self, key: str) -> bool: ...

    def load(self, key: str) -> Any: ...

    def save(self, key: str, result: Any) -> None: ...


class NoStore:
    """Keeps nothing: every result is computed (commands without a resumable store)."""

    def has(self, key: str) -> bool:
        return False

    def load(self, key: str) -> Any:
        raise KeyError(key)

    def save(self, key: str, result: Any) -> None:
        return None


@dataclass
class JobPlan:
    """What to compute: ``jobs`` (the results wanted, in order) and ``inputs`` (jobs whose results only
    feed other jobs, through ``Job.needs``; run only when a missing job needs them), with their stores."""

    jobs: Sequence[Job]
    store: ResultStore = field(default_factory=NoStore)
    inputs: Mapping[str, Job] = field(default_factory=dict)
    input_store: ResultStore = field(default_factory=NoStore)
    noun: str = "jobs"  # the progress line: "{noun} {done}/{total} {label} | {workers}"


@dataclass
class Finished:
    """The results of a plan's jobs in job order, and how many were reused or computed."""

    results: list[Any]
    reused: int
    computed: int


def run_jobs(pool: Pool, plan: JobPlan, progress: ProgressFn | None = None) -> Finished:
    """Compute every job of ``plan`` that its store does not hold; return all results in job order."""
    return DriverRun(pool, plan, progress).run()


class DriverRun:
    """One pass of the driver over a plan (see the module's docstring); ``run`` returns its results."""

    def __init__(self, pool: Pool, plan: JobPlan, progress: ProgressFn | None) -> None:
        keys = [job.key for job in plan.jobs]
        if len(set(keys)) != len(keys):
            raise ValueError("two jobs of a plan have the same key")
        if set(keys) & set(plan.inputs) or any(job.needs for job in plan.inputs.values()):
            raise ValueError("an input job is also a wanted job, or needs another job")
        self.pool, self.plan, self.progress = pool, plan, progress
        self.stored = {key for key in keys if plan.store.has(key)}
        self.fresh: dict[str, Any] = {}
        self.users: Counter[str] = Counter()  # missing jobs per needed key, to free shared results
        groups: dict[tuple[str, ...], list[Job]] = {}
        for job in plan.jobs:
            if job.key in self.stored:
                continue
            unknown = [need for need in job.needs if need not in plan.inputs]
            if unknown:
                raise ValueError(f"job {job.key} needs {unknown[0]}, which is no input job of the plan")
            self.users.update(job.needs)
            groups.setdefault(job.needs, []).append(job)
        self.ready: deque[Job] = deque(groups.pop((), []))
        self.unopened = deque(groups.items())  # missing jobs grouped by what they need, in plan order
        self.waiting: list[tuple[tuple[str, ...], list[Job]]] = []
        self.handles: dict[str, Any] = {}  # shared results of input jobs still needed
        self.requested: set[str] = set()
        self.labels = {job.key: job.label for job in plan.jobs}

    def run(self) -> Finished:
        self._report("")
        self._fill()
        while self.pool.pending:
            job, result = self.pool.next_result()
            if job.key in self.plan.inputs:
                self._input_done(job.key, result)
            else:
                self._job_done(job, result)
            self._fill()
        missing = [job.key for job in self.plan.jobs if job.key not in self.stored and job.key not in self.fresh]
        if missing:
            raise VditscopeError(f"the pool stopped before job {missing[0]} finished")
        results = [
            self.fresh[job.key] if job.key in self.fresh else self.plan.store.load(job.key) for job in self.plan.jobs
        ]
        return Finished(results, reused=len(self.stored), computed=len(self.fresh))

    def _fill(self) -> None:
        """Keep the pool busy: ready jobs first, else open the next group (submitting what it needs)."""
        while self.pool.pending < self.pool.capacity:
            if self.ready:
                self.pool.submit(self.ready.popleft())
            elif self.unopened:
                self._open(*self.unopened.popleft())
            else:
                return

    def _open(self, needs: tuple[str, ...], jobs: list[Job]) -> None:
        for key in needs:
            if key in self.handles or key in self.requested:
                continue
            if self.plan.input_store.has(key):
                self.handles[key] = self.pool.share(self.plan.input_store.load(key))
            else:
                self.requested.add(key)
                self.pool.submit(self.plan.inputs[key])
        self.waiting.append((needs, jobs))
        self._release()

    def _release(self) -> None:
        """Move the groups whose inputs are all shared to the ready queue (in the order they opened)."""
        still = []
        for needs, jobs in self.waiting:
            if all(key in self.handles for key in needs):
                self.ready.extend(self._with_inputs(job) for job in jobs)
            else:
                still.append((needs, jobs))
        self.waiting = still

    def _with_inputs(self, job: Job) -> Job:
        return replace(job, inputs=(*job.inputs, *(self.handles[key] for key in job.needs)))

    def _input_done(self, key: str, result: Any) -> None:
        if key not in self.requested:
            raise VditscopeError(f"input job {key} came back twice")
        self.requested.discard(key)
        self.plan.input_store.save(key, result)
        self.handles[key] = self.pool.share(result)
        self._release()

    def _job_done(self, job: Job, result: Any) -> None:
        if job.key in self.fresh or job.key in self.stored:  # never saved twice: a job's first result stands
            raise VditscopeError(f"job {job.key} came back twice")
        self.plan.store.save(job.key, result)
        self.fresh[job.key] = result
        for key in job.needs:
            self.users[key] -= 1
            if not self.users[key]:
                self.handles.pop(key, None)  # the last job that needed it: free the shared result
        self._report(self.labels.get(job.key, ""))

    def _report(self, label: str) -> None:
        if self.progress is None:
            return
        done, total = len(self.stored) + len(self.fresh), len(self.plan.jobs)
        workers = self.pool.worker_summary()
        message = f"{self.plan.noun} {done}/{total}" + (f" {label}" if label else "")
        self.progress(message + (f" | {workers}" if workers else ""), done, total)
