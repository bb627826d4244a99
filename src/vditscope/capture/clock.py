"""The denoising step and generation counters of a hook session, driven by the pipeline's scheduler."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StepClock:
    """Denoising step and generation counters, driven by the scheduler when a pipeline is given."""

    driven_by_scheduler: bool = False
    generation: int = 0
    step: int = 0
    calls: dict[str, int] = field(default_factory=dict)
    started: bool = False

    def set_timesteps(self) -> None:
        self.generation += 1 if self.started else 0
        self.started = True
        self.step = 0

    def scheduler_step(self) -> None:
        self.step += 1

    def forward_step(self, branch_key: str) -> int:
        """Step of a transformer forward: the scheduler's count, or the call count of a bare model."""
        if self.driven_by_scheduler:
            return self.step
        step = self.calls.get(branch_key, 0)
        self.calls[branch_key] = step + 1
        return step


@contextmanager
def scheduler_clock(scheduler: Any, clock: StepClock) -> Iterator[None]:
    """Count denoising steps and generations by wrapping the scheduler's set_timesteps and step
    (instance attributes, removed again on exit)."""
    if scheduler is None or not callable(getattr(scheduler, "step", None)):
        yield
        return
    own = {name: scheduler.__dict__[name] for name in ("step", "set_timesteps") if name in scheduler.__dict__}
    original_step = scheduler.step
    original_set = scheduler.set_timesteps

    def step(*args: Any, **kwargs: Any) -> Any:
        try:
            return original_step(*args, **kwargs)
        finally:
            clock.scheduler_step()

    def set_timesteps(*args: Any, **kwargs: Any) -> Any:
        clock.set_timesteps()
        return original_set(*args, **kwargs)

    scheduler.step = step
    scheduler.set_timesteps = set_timesteps
    clock.driven_by_scheduler = True
    try:
        yield
    finally:
        for name in ("step", "set_timesteps"):
            if name in own:
                setattr(scheduler, name, own[name])
            else:
                scheduler.__dict__.pop(name, None)
