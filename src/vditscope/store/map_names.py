"""Names of the pooled maps in maps.safetensors, and their parsing.

``{key}.p{prompt}.s{seed}.{kind}.layer{layer}`` holds a map averaged over the captured steps;
``{key}.p{prompt}.s{seed}.step{step}.{kind}.layer{layer}`` one taken at a single step. Every map
is per head: (heads, ...).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_PATTERN = re.compile(
    r"^(?P<key>[a-z_]+)\.p(?P<prompt>\d+)\.s(?P<seed>-?\d+)(?:\.step(?P<step>\d+))?\.(?P<kind>[a-z]+)\.layer(?P<layer>\d+)$"
)


@dataclass(frozen=True)
class MapName:
    """What one stored map is: statistic, prompt index, seed, site kind, layer, and step (None = mean)."""

    key: str
    prompt: int
    seed: int
    kind: str
    layer: int
    step: int | None = None

    def __str__(self) -> str:
        step = "" if self.step is None else f".step{self.step}"
        return f"{self.key}.p{self.prompt}.s{self.seed}{step}.{self.kind}.layer{self.layer}"

    @property
    def generation(self) -> str:
        """The generation label used for videos and figure titles: ``p{prompt}.s{seed}``."""
        return f"p{self.prompt}.s{self.seed}"


def parse_map_name(name: str) -> MapName | None:
    """The parts of a stored map name, or None for a name of another form."""
    match = _PATTERN.match(name)
    if match is None:
        return None
    step = match["step"]
    return MapName(
        key=match["key"],
        prompt=int(match["prompt"]),
        seed=int(match["seed"]),
        kind=match["kind"],
        layer=int(match["layer"]),
        step=None if step is None else int(step),
    )
