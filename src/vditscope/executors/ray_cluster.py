"""The Ray executor: one actor per GPU (or per CPU) of a Ray cluster loads the model once and serves
many jobs; the driver keeps a queue, hands each worker up to two jobs at a time, and starts a job
again on another worker when its worker dies. Results come back to the driver, which alone writes.

Ray is imported only when a pool starts, so the rest of vditscope never needs it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from ..errors import VditscopeError
from .base import RAY_MISSING, Job, check_address
from .workbench import ModelFacts, ModelSpec, Workbench

PROBE_SECONDS = 5.0  # to open a TCP connection to the address
ANSWER_SECONDS = 3.0  # for the service there to answer the HTTP/2 preface
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HTTP2_EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # length 0, type SETTINGS, no flags, stream 0
JOBS_PER_WORKER = 2  # one running, one waiting: a worker never idles while the driver writes
MAX_ATTEMPTS = 3  # a job whose worker dies this many times stops the run


class RayWorker:
    """The actor body: loads the model on first use and runs jobs on it."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.bench: Workbench | None = None

    def load(self) -> ModelFacts:
        if self.bench is None:
            self.bench = Workbench(self.spec)
        return self.bench.facts()

    def run(self, task: Any, *inputs: Any) -> Any:
        self.load()
        assert self.bench is not None
        return self.bench.run(task, *inputs)


@dataclass(eq=False)
class WorkerState:
    """The driver's view of one actor: where it runs, jobs done and running, whether it is alive."""

    name: str
    actor: Any
    host: str = ""
    pid: int = 0
    done: int = 0
    running: int = 0
    alive: bool = True


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise VditscopeError(RAY_MISSING) from None
    return ray


def probe(address: str, connect_seconds: float = PROBE_SECONDS, answer_seconds: float = ANSWER_SECONDS) -> None:
    """Fail in seconds, with one line, unless a gRPC server answers at HOST:PORT (ray.init would retry
    for minutes when nothing listens, and log for 20 s when another kind of service does).

    Ray's GCS and client server speak gRPC, that is HTTP/2: sent the HTTP/2 client preface, they
    answer with a SETTINGS frame. Where Ray uses TLS (RAY_USE_TLS) only the TCP connection is checked.
    Needs no Ray, so it runs before Ray is imported."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        sock = socket.create_connection((host.strip("[]"), int(port)), timeout=connect_seconds)
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise VditscopeError(f"cannot reach a Ray cluster at {address}: {reason}") from None
    with sock:
        if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
            return
        answer, closed = b"", False
        deadline = time.monotonic() + answer_seconds
        try:
            sock.settimeout(answer_seconds)
            sock.sendall(HTTP2_PREFACE + HTTP2_EMPTY_SETTINGS)
            while len(answer) < 9:
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                data = sock.recv(9 - len(answer))
                if not data:
                    closed = True
                    break
                answer += data
        except TimeoutError:
            pass
        except OSError:  # a reset after the preface
            closed = True
    # a frame header: 3 bytes length, type (4 = SETTINGS), flags, stream 0
    if len(answer) == 9 and answer[3] == 4 and answer[5:9] == b"\0\0\0\0":
        return
    port_hint = (
        "ray:// takes the head node's Ray Client port (10001 by default)"
        if address.startswith("ray://")
        else "--address takes the head node's GCS port (6379 unless `ray start --port` said otherwise)"
    )
    raise VditscopeError(
        f"no Ray cluster at {address}: {_describe_answer(answer, closed, answer_seconds)}; {port_hint}"
    )


def _describe_answer(answer: bytes, closed: bool, answer_seconds: float) -> str:
    if not answer:
        if closed:
            return "the service there closed the connection without a gRPC answer"
        return f"the service there gave no gRPC answer within {answer_seconds:g} s"
    if answer.startswith(b"HTTP/"):
        return "an HTTP server answers there, not Ray's gRPC"
    return f"the service there answered {answer!r}, not Ray's gRPC"


def connect(address: str | None, init_kwargs: dict[str, Any] | None = None) -> bool:
    """Join the cluster at ``address`` (None: this node's cluster, or a new one on this node).
    Returns whether this call started the connection (and so must shut it down)."""
    check_address(address)
    if address not in (None, "auto"):
        probe(address)
    ray = _ray()
    if ray.is_initialized():  # a caller (a notebook, a test) already chose the cluster
        return False
    kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    if address is None:
        kwargs["include_dashboard"] = False
    kwargs.update(init_kwargs or {})
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, ray.exceptions.RayError, RuntimeError) as exc:
        where = "with --address auto (is `ray start --head` running?)" if address == "auto" else f"at {address}"
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VditscopeError(f"no Ray cluster found {where}: {line}") from None
    return True


def worker_resources(device: str, resources: dict[str, float], cpus_per_worker: int) -> tuple[str, dict, int]:
    """(device inside a worker, actor resource options, how many workers the cluster holds)."""
    gpus = int(resources.get("GPU", 0))
    if device.startswith("cuda") or (device == "auto" and gpus > 0):
        if gpus < 1:
            raise VditscopeError(f"--device {device} needs GPUs, but the Ray cluster has none")
        return "cuda", {"num_gpus": 1, "num_cpus": 1}, gpus
    cpus = int(resources.get("CPU", 0))
    count = cpus // cpus_per_worker
    if count < 1:
        raise VditscopeError(f"the Ray cluster has {cpus} CPUs, fewer than one worker needs ({cpus_per_worker})")
    return ("cpu" if device == "auto" else device), {"num_cpus": cpus_per_worker}, count


class RayPool:
    """Actors on a Ray cluster; a worker that dies is replaced and its jobs run again elsewhere."""

    def __init__(
        self,
        spec: ModelSpec,
        address: str | None = None,
        *,
        max_workers: int | None = None,
        cpus_per_worker: int = 1,
        init_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self._owns_ray = connect(address, init_kwargs)
        self._ray = _ray()
        self.retries = 0
        self._workers: list[WorkerState] = []
        self._loading: dict[Any, WorkerState] = {}
        self._inflight: dict[Any, tuple[Job, WorkerState]] = {}
        self._queue: deque[Job] = deque()
        self._attempts: dict[str, int] = {}
        self._all: list[WorkerState] = []  # every worker started, dead ones included
        try:
            device, options, count = worker_resources(spec.device, self._ray.cluster_resources(), cpus_per_worker)
            count = min(count, max_workers) if max_workers else count
            self.capacity = JOBS_PER_WORKER * count
            self._spare = max(2, count)  # replacements allowed for dead workers
            self._actor_class = self._ray.remote(RayWorker).options(max_restarts=0, max_task_retries=0, **options)
            self._spec = spec.on(device)
            for _ in range(count):
                self._start_worker()
            self.facts = self._wait_for_a_worker()
        except BaseException:
            self.close()
            raise

    # -- workers ---------------------------------------------------------------------------------

    def _start_worker(self) -> None:
        worker = WorkerState(name=f"w{len(self._all) + 1}", actor=self._actor_class.remote(self._spec))
        self._all.append(worker)
        self._loading[worker.actor.load.remote()] = worker

    def _wait_for_a_worker(self) -> ModelFacts:
        while not self._workers:
            if not self._loading:
                raise VditscopeError("no Ray worker could start")
            ready, _ = self._ray.wait(list(self._loading), num_returns=1)
            self._joined(ready[0])
        return self.facts

    def _joined(self, ref: Any) -> None:
        """A worker finished loading the model (or failed to)."""
        worker = self._loading.pop(ref)
        try:
            facts = self._ray.get(ref)
        except self._ray.exceptions.RayTaskError as exc:
            self._raise_task_error(exc)
        except self._ray.exceptions.RayError:
            self._bury(worker)
            return
        if self._workers and _model_of(facts) != _model_of(self.facts):
            raise VditscopeError(f"worker {facts.host}:{facts.pid} loaded a different model ({_model_of(facts)})")
        worker.host, worker.pid = facts.host, facts.pid
        self._workers.append(worker)
        if len(self._workers) == 1:
            self.facts = facts

    def _bury(self, worker: WorkerState) -> None:
        """Forget a dead worker for good and start a replacement while spares last."""
        if not worker.alive:
            return
        worker.alive = False
        if worker in self._workers:
            self._workers.remove(worker)
        self._kill(worker)
        if self._spare > 0:
            self._spare -= 1
            self._start_worker()

    def _kill(self, worker: WorkerState) -> None:
        with contextlib.suppress(Exception):  # an actor already gone has nothing to stop
            self._ray.kill(worker.actor, no_restart=True)

    @staticmethod
    def _raise_task_error(exc: Any) -> None:
        """A job raised: a user-facing error becomes one line; anything else keeps the remote traceback."""
        cause = getattr(exc, "cause", None)
        if isinstance(cause, (VditscopeError, ValueError, FileNotFoundError)):
            raise cause from None
        raise exc

    # -- jobs ------------------------------------------------------------------------------------

    def share(self, value: Any) -> Any:
        return self._ray.put(value)

    def submit(self, job: Job) -> None:
        self._queue.append(job)

    @property
    def pending(self) -> int:
        return len(self._queue) + len(self._inflight)

    def _dispatch(self) -> None:
        while self._queue:
            free = [w for w in self._workers if w.running < JOBS_PER_WORKER]
            if not free:
                return
            worker = min(free, key=lambda w: w.running)
            job = self._queue.popleft()
            ref = worker.actor.run.remote(job.task, *job.inputs)
            self._inflight[ref] = (job, worker)
            worker.running += 1

    def next_result(self) -> tuple[Job, Any]:
        if not self.pending:
            raise RuntimeError("no job is pending")
        while True:
            self._dispatch()
            if not self._inflight and not self._loading:
                raise VditscopeError("every Ray worker died; rerun the command to compute the missing results")
            ready, _ = self._ray.wait([*self._inflight, *self._loading], num_returns=1)
            ref = ready[0]
            if ref in self._loading:
                self._joined(ref)
                continue
            job, worker = self._inflight.pop(ref)
            worker.running -= 1
            try:
                result = self._ray.get(ref)
            except self._ray.exceptions.RayTaskError as exc:
                self._raise_task_error(exc)
            except self._ray.exceptions.RayError as exc:  # the worker (or its node) died mid-job
                self._retry(job, exc)
                self._bury(worker)
                continue
            worker.done += 1
            return job, result

    def _retry(self, job: Job, exc: Exception) -> None:
        attempts = self._attempts[job.key] = self._attempts.get(job.key, 0) + 1
        if attempts >= MAX_ATTEMPTS:
            line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise VditscopeError(f"job {job.key} lost its Ray worker {attempts} times; last: {line}")
        self.retries += 1
        self._queue.appendleft(job)

    def workers(self) -> list[WorkerState]:
        """Every worker started so far, dead ones included, in start order."""
        return list(self._all)

    def worker_summary(self) -> str:
        loading = set(self._loading.values())
        parts = [
            f"{w.name} " + ("loading" if w in loading else f"{w.done}" + ("" if w.alive else " lost"))
            for w in self._all
        ]
        return "cells per worker: " + ", ".join(parts)

    def close(self) -> None:
        """Stop every actor; disconnect when this pool connected."""
        for worker in self._all:
            self._kill(worker)
        self._workers.clear()
        self._loading.clear()
        self._inflight.clear()
        self._queue.clear()
        if self._owns_ray:
            self._ray.shutdown()
            self._owns_ray = False

    def __enter__(self) -> RayPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _model_of(facts: ModelFacts) -> tuple:
    return (facts.family, facts.layers, facts.self_layers, facts.heads)


class RayExecutor:
    """Runs jobs on the workers of a Ray cluster (``address``: None, 'auto', HOST:PORT or ray://HOST:PORT)."""

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        *,
        max_workers: int | None = None,
        cpus_per_worker: int = 1,
        init_kwargs: dict[str, Any] | None = None,
    ) -> None:
        check_address(address)
        _ray()
        self.address = address
        self.max_workers = max_workers
        self.cpus_per_worker = cpus_per_worker
        self.init_kwargs = init_kwargs

    def start(self, spec: ModelSpec) -> RayPool:
        return RayPool(
            spec,
            self.address,
            max_workers=self.max_workers,
            cpus_per_worker=self.cpus_per_worker,
            init_kwargs=self.init_kwargs,
        )
