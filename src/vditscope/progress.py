"""How long-running work reports progress, one signature for the library and the command line (a light module:
the command line imports it before torch)."""

from __future__ import annotations

from collections.abc import Callable

# progress(message, done, total): what is being done, units done, units in all (None while unknown)
ProgressFn = Callable[[str, int, int], None]
# a training loop's progress(step, total steps, recent mean loss)
LossProgressFn = Callable[[int, int, float], None]
