"""`AttentionEdit`: one edit of the attention computation (what and where), with the JSON form that
plans on disk use."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any

from ..stats.block_sparse import check_block_method
from ..stats.sparsify import check_sparsity
from ..stats.structured import check_window
from .selection import BRANCHES, SELF_ONLY, Selection, step_range

__all__ = ["BRANCHES", "AttentionEdit"]

SET_FIELDS = ("layers", "heads", "branches")
PAIR_FIELDS = ("steps", "window")


@dataclass(frozen=True)
class AttentionEdit:
    """What to change (bottom_k, top_p, temperature) and where (None = everywhere).

    ``steps`` is a half-open range [start, stop) of denoising steps; ``branches`` a subset of
    {"cond", "uncond"}; ``heads`` query-head indices. ``mask`` picks a structured window
    (spatial, temporal, tiles, svg; see ``stats/structured.py``) with optional half-widths
    ``window`` = (frames, rows, columns), or ``blocks``, the key blocks holding pooled mass
    ``block_mass`` (``stats/block_sparse.py``); a mask combines with a temperature, not with
    bottom_k/top_p.
    ``where`` is the same place as a ``Selection`` of self-attention calls.
    """

    bottom_k: float = 0.0
    top_p: float | None = None
    temperature: float = 1.0
    layers: frozenset[int] | None = None
    heads: frozenset[int] | None = None
    steps: tuple[int, int] | None = None
    branches: frozenset[str] | None = None
    mask: str | None = None
    window: tuple[int, int, int] | None = None
    block_mass: float | None = None

    def __post_init__(self) -> None:
        check_sparsity(self.bottom_k, self.top_p, self.temperature)
        if self.mask is not None:
            check_block_method(self.mask, self.window, self.block_mass)
            if self.mask != "blocks":
                object.__setattr__(self, "window", check_window(self.mask, self.window))
            if self.bottom_k > 0 or self.top_p is not None:
                raise ValueError("a structured mask combines with a temperature, not with bottom_k or top_p")
        elif self.window is not None:
            raise ValueError("a window needs a mask kind (spatial, temporal or tiles)")
        elif self.block_mass is not None:
            raise ValueError("block_mass needs the blocks mask")
        if self.steps is not None:
            steps = step_range(self.steps)
            object.__setattr__(self, "steps", (steps.start, steps.stop))
        where = self.where  # checks the sets (empty, branches) and normalizes them
        for name in SET_FIELDS:
            object.__setattr__(self, name, getattr(where, name))

    @cached_property
    def where(self) -> Selection:
        """The edit's place as a Selection of self-attention calls."""
        steps = None if self.steps is None else range(*self.steps)
        return Selection(self.layers, steps, self.branches, self.heads, SELF_ONLY, owner="an edit")

    @property
    def is_identity(self) -> bool:
        return self.bottom_k == 0 and self.top_p is None and self.temperature == 1.0 and self.mask is None

    def matches(self, layer: int, step: int, branch: str) -> bool:
        return self.where.matches(layer, step, branch)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (sets as sorted lists), the inverse of ``from_dict``."""
        data = asdict(self)
        if data["block_mass"] is None:
            del data["block_mass"]  # plans without the blocks method keep their earlier form
        for name in SET_FIELDS:
            if data[name] is not None:
                data[name] = sorted(data[name])
        for name in PAIR_FIELDS:
            if data[name] is not None:
                data[name] = list(data[name])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AttentionEdit:
        values = dict(data)
        for name in SET_FIELDS:
            if values.get(name) is not None:
                values[name] = frozenset(values[name])
        for name in PAIR_FIELDS:
            if values.get(name) is not None:
                values[name] = tuple(values[name])
        return cls(**values)
