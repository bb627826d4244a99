"""The README's Python runs as written (on the shipped tiny model)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks
    namespace: dict = {}  # one namespace: the README reads top to bottom, later blocks use earlier names
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
        if "cap" in namespace:
            table = namespace["cap"].table()
            assert len(table) and {"layer", "head", "entropy", "text_mass", "sink_ratio"} <= set(table.columns)
        if "stats" in namespace:
            assert tuple(namespace["stats"].frame_map.shape) == (1, 2, 5, 5)
    norms = namespace["norms"].norms  # the custom observer of "Hook techniques, and your own"
    assert norms and {layer for _, layer, _ in norms} == {1} and all(value > 0 for *_, value in norms)


def command_lines() -> list[str]:
    """The README's shell lines that run vditscope (continuation lines joined, comments dropped)."""
    text = "\n".join(re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)).replace("\\\n", " ")
    return [line.split("  #")[0].strip() for line in text.splitlines() if ".venv/bin/vditscope " in line]


def test_readme_commands_of_one_kind_write_to_their_own_out() -> None:
    """Two different commands in the README never share an --out (a sweep would rewrite the other's table)."""
    outs: dict[str, set[str]] = {}
    for line in command_lines():
        words = line.split(".venv/bin/vditscope ", 1)[1].split()
        command = " ".join(words[:2]) if words[0] == "sweep" else words[0]
        out = words[words.index("--out") + 1] if "--out" in words else f"default of {command}"
        outs.setdefault(out, set()).add(line)
    shared = {out: lines for out, lines in outs.items() if len(lines) > 1}
    assert not shared, shared
