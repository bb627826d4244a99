"""The README's Python runs as written (on the shipped tiny model)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, str(README), "exec"), namespace)
        if "cap" in namespace:
            table = namespace["cap"].table()
            assert len(table) and {"layer", "head", "entropy", "text_mass", "sink_ratio"} <= set(table.columns)
        if "stats" in namespace:
            assert tuple(namespace["stats"].frame_map.shape) == (1, 2, 5, 5)
