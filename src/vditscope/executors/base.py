"""What every executor shares: the job, the pool and executor protocols, and the --address check
(its own module, so that the executors import it without importing the package that picks them)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import VditscopeError
from .workbench import ModelFacts, ModelSpec

EXECUTORS = ("local", "ray")
RAY_MISSING = "--executor ray needs Ray, which is not installed: pip install 'vditscope[ray]'"
_ADDRESS = re.compile(r"^(ray://)?(?P<host>[^\s:/]+|\[[0-9a-fA-F:.]+\]):(?P<port>\d{1,5})$")


@dataclass(frozen=True)
class Job:
    """One unit of work: ``task(workbench, *inputs)`` on a worker; ``key`` names its result file.

    ``inputs`` are large values shared by many jobs (handles from ``Pool.share``), kept apart from the
    task so that a cluster ships each of them to a node once. ``needs`` names other jobs whose results
    the driver (executors/driver.py) shares and appends to ``inputs``; ``label`` is what the progress
    line shows when the job finishes. Pools look at ``key``, ``task`` and ``inputs`` only."""

    key: str
    task: Callable[..., Any]
    inputs: tuple[Any, ...] = field(default=())
    needs: tuple[str, ...] = field(default=())
    label: str = ""


class Pool(Protocol):
    """Workers that have loaded the model; jobs go in with ``submit``, results come out one by one."""

    facts: ModelFacts
    capacity: int  # jobs worth keeping submitted so that no worker waits
    retries: int  # jobs started again because their worker died

    def share(self, value: Any) -> Any:
        """A handle to pass in ``Job.inputs`` instead of the value itself."""
        ...

    def submit(self, job: Job) -> None: ...

    def next_result(self) -> tuple[Job, Any]:
        """Block until a submitted job finishes; its job and result (a worker's error is raised here)."""
        ...

    @property
    def pending(self) -> int:
        """Jobs submitted and not yet returned by ``next_result``."""
        ...

    def worker_summary(self) -> str:
        """Jobs done per worker, for the progress bar ('' when there is only this process)."""
        ...

    def close(self) -> None:
        """Stop the workers (a pool is also a context manager that closes on exit)."""
        ...

    def __enter__(self) -> Pool: ...

    def __exit__(self, *exc: object) -> None: ...


class Executor(Protocol):
    """Starts a pool of workers for one model."""

    name: str

    def start(self, spec: ModelSpec) -> Pool: ...


def check_address(address: str | None) -> None:
    """None (this node: join its cluster or start one), 'auto' (an existing cluster), HOST:PORT or ray://HOST:PORT."""
    if address is None or address == "auto":
        return
    match = _ADDRESS.match(address)
    if match is None or not 0 < int(match["port"]) < 65536:
        raise VditscopeError(f"bad --address {address!r}: use auto or HOST:PORT (the head node's GCS port, e.g. :6379)")
