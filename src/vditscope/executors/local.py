"""The default executor: jobs run one after another in this process, on a pipeline loaded once."""

from __future__ import annotations

from collections import deque
from typing import Any

from .base import Job
from .workbench import ModelFacts, ModelSpec, Workbench


class LocalPool:
    """A pool of one worker, this process; a job runs when its result is asked for."""

    capacity = 1
    retries = 0

    def __init__(self, spec: ModelSpec) -> None:
        self.bench = Workbench(spec)
        self.facts: ModelFacts = self.bench.facts()
        self._queue: deque[Job] = deque()

    def share(self, value: Any) -> Any:
        return value

    def submit(self, job: Job) -> None:
        self._queue.append(job)

    def next_result(self) -> tuple[Job, Any]:
        job = self._queue.popleft()
        return job, self.bench.run(job.task, *job.inputs)

    @property
    def pending(self) -> int:
        return len(self._queue)

    def worker_summary(self) -> str:
        return ""

    def close(self) -> None:
        self._queue.clear()

    def __enter__(self) -> LocalPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalExecutor:
    """Runs every job in this process; Ray is not needed."""

    name = "local"

    def start(self, spec: ModelSpec) -> LocalPool:
        return LocalPool(spec)
