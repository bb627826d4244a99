"""`Selection`: where a hook technique acts (layers, steps, CFG branches, heads, site kinds), with its
checks, so that every config spells "where" the same way."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..adapters import AttentionSite

BRANCHES = ("cond", "uncond")
SITE_KINDS = ("self", "cross", "image")
SELF_ONLY = frozenset({"self"})


def step_range(steps: Any) -> range:
    """A half-open step range [start, stop) from a (start, stop) pair; start < stop, start >= 0."""
    start, stop = (int(s) for s in steps)
    if not 0 <= start < stop:
        raise ValueError(f"a step range must be start < stop with start >= 0, got {steps}")
    return range(start, stop)


def _as_set(values: Iterable[Any] | None, kind: type) -> frozenset[Any] | None:
    return None if values is None else frozenset(kind(v) for v in values)


@dataclass(frozen=True)
class Selection:
    """Where a technique acts; None = everywhere. ``steps`` is a set of denoising steps or a
    ``range``; ``heads`` query-head indices; ``kinds`` call kinds ("self", "cross", "image": the image-token
    call of an image-to-video cross-attention site).

    Empty layer, head, branch or kind sets raise ValueError (an empty step set observes no step);
    ``owner`` only names what the selection belongs to in those messages ("an edit")."""

    layers: frozenset[int] | None = None
    steps: frozenset[int] | range | None = None
    branches: frozenset[str] | None = None
    heads: frozenset[int] | None = None
    kinds: frozenset[str] | None = None
    owner: str = field(default="", compare=False, repr=False)

    def __post_init__(self) -> None:
        for name, single, kind in (
            ("layers", "layer", int),
            ("heads", "head", int),
            ("branches", "branch", str),
            ("kinds", "kind", str),
        ):
            value = _as_set(getattr(self, name), kind)
            if value is not None and not value:
                of = f" of {self.owner}" if self.owner else ""
                raise ValueError(f"the {single} set{of} is empty")
            object.__setattr__(self, name, value)
        if self.branches is not None and not self.branches <= set(BRANCHES):
            raise ValueError(f"branches must be among {', '.join(BRANCHES)}, got {sorted(self.branches)}")
        if self.kinds is not None and not self.kinds <= set(SITE_KINDS):
            raise ValueError(f"site kinds must be among {', '.join(SITE_KINDS)}, got {sorted(self.kinds)}")
        if isinstance(self.steps, range):
            object.__setattr__(self, "steps", step_range((self.steps.start, self.steps.stop)))
        elif self.steps is not None:
            object.__setattr__(self, "steps", _as_set(self.steps, int))

    def takes_site(self, site: AttentionSite) -> bool:
        """The site's layer and one of the kinds of its calls are selected."""
        return (self.layers is None or site.layer in self.layers) and (
            self.kinds is None or not self.kinds.isdisjoint(site.kinds)
        )

    def takes_kind(self, kind: str) -> bool:
        """A call of this kind is selected (the other calls of a selected site run untouched)."""
        return self.kinds is None or kind in self.kinds

    def takes_step(self, step: int) -> bool:
        return self.steps is None or step in self.steps

    def matches(self, layer: int, step: int, branch: str | None = None) -> bool:
        """A call of this layer at this step (and, when given, of this CFG branch) is selected."""
        return (
            (self.layers is None or layer in self.layers)
            and self.takes_step(step)
            and (branch is None or self.branches is None or branch in self.branches)
        )

    def head_indices(self, num_heads: int) -> list[int]:
        """The selected heads that exist in a call with ``num_heads`` query heads, ascending."""
        return sorted(h for h in (self.heads or range(num_heads)) if 0 <= h < num_heads)

    def check_layers(self, num_layers: int) -> None:
        """ValueError naming the first selected layer a model of ``num_layers`` layers lacks."""
        bad = sorted(layer for layer in self.layers or () if not 0 <= layer < num_layers)
        if bad:
            raise ValueError(f"layer {bad[0]} is out of range: the model has {num_layers} layers (0-{num_layers - 1})")


def layer_count(sites: list[AttentionSite]) -> int:
    """Number of video layers among the sites."""
    return len({site.layer for site in sites})


def checked_site_layers(layers: Iterable[int] | None, sites: list[AttentionSite]) -> set[int] | None:
    """The chosen layers as a set (None = all); an empty set or a layer the sites lack raises ValueError."""
    if layers is None:
        return None
    selection = Selection(layers=frozenset(int(layer) for layer in layers))
    selection.check_layers(layer_count(sites))
    return set(selection.layers or ())
