"""Where the jobs of a long command (analyze, the sweeps, edit, edit-sweep, sinks, text-ablation, generate)
run: in this process (``local``) or on the workers of a Ray cluster (``ray``). One driver (``run_jobs``)
hands the jobs to a pool, feeds jobs the shared results they need and saves every result itself, so
the run directory is the same whichever executor computed it.

Importing this package never imports Ray; ``executor_for("ray")`` checks that Ray is installed.
"""

from __future__ import annotations

from ..errors import VditscopeError
from .base import EXECUTORS, RAY_MISSING, Executor, Job, Pool, check_address
from .driver import Finished, JobPlan, NoStore, ResultStore, run_jobs
from .local import LocalExecutor
from .ray_cluster import RayExecutor
from .workbench import ModelFacts, ModelSpec, Workbench, checked_model_dir


def executor_for(name: str = "local", address: str | None = None) -> Executor:
    """The executor a command line names, checked before anything is loaded or written."""
    if name == "local":
        if address is not None:
            raise VditscopeError("--address goes with --executor ray")
        return LocalExecutor()
    if name == "ray":
        check_address(address)
        try:
            import ray  # noqa: F401
        except ImportError:
            raise VditscopeError(RAY_MISSING) from None
        return RayExecutor(address)
    raise VditscopeError(f"unknown executor {name!r}; choose {' or '.join(EXECUTORS)}")


__all__ = [
    "EXECUTORS",
    "RAY_MISSING",
    "Executor",
    "Finished",
    "Job",
    "JobPlan",
    "ModelFacts",
    "ModelSpec",
    "NoStore",
    "Pool",
    "ResultStore",
    "Workbench",
    "check_address",
    "checked_model_dir",
    "executor_for",
    "run_jobs",
]
