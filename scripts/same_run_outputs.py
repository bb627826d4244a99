"""Whether two analyze run directories hold the same results: each table byte for byte and as a
DataFrame, each tensor file tensor by tensor, and which run.json fields differ. Used to show that a
refactoring left the main job's outputs unchanged (run it on a run made before and one made after).

Usage: python scripts/same_run_outputs.py RUN_BEFORE RUN_AFTER
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import load_file

TABLES = ("stats.parquet", "similarity.parquet", "heads.parquet", "text_attention.parquet", "head_sinks.parquet")
TENSORS = ("maps.safetensors", "videos.safetensors")


def main(before: Path, after: Path) -> int:
    same = True
    for name in TABLES:
        a, b = (before / name).read_bytes(), (after / name).read_bytes()
        equal = pd.read_parquet(before / name).equals(pd.read_parquet(after / name))
        identical = hashlib.sha256(a).digest() == hashlib.sha256(b).digest()
        print(f"{name:24s} equal tables: {equal}  identical bytes: {identical}")
        same &= equal
    for name in TENSORS:
        a, b = load_file(str(before / name)), load_file(str(after / name))
        equal = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        print(f"{name:24s} equal tensors: {equal} ({len(a)} tensors)")
        same &= equal
    ra, rb = json.loads((before / "run.json").read_text()), json.loads((after / "run.json").read_text())
    print("run.json fields that differ:", ", ".join(sorted(k for k in ra.keys() | rb.keys() if ra.get(k) != rb.get(k))))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
