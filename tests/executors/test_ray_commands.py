"""The atomic long commands on a local Ray cluster (2 CPUs, started here) through their request fields
``executor="ray", address=...``: sinks (generations, then the ablation on a shared reference) and
edit-sweep (windows scored against a shared plain run) write the same tables as the local executor."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from vditscope.analyses.edit import EditRequest, run_edit_sweep
from vditscope.analyses.sinks import SinksRequest, run_sinks

SMALL = {"num_frames": 9, "num_inference_steps": 2, "height": 32, "width": 32, "device": "cpu"}
PROMPTS = ("a red square moving left on a black background", "a green circle moving up on a white background")
SINK_TABLES = ("sinks", "sink_layers", "sink_where", "sink_consistency", "sink_calls", "sink_ablation")


def sinks_request(out: Path, **fields) -> SinksRequest:
    """tiny-cogvideox (it has sinks, so the ablation runs too): 2 prompts x 1 seed."""
    return SinksRequest(model="tiny-cogvideox", prompts=PROMPTS, seeds=(0,), out=out, **SMALL, **fields)


def edit_request(out: Path, **fields) -> EditRequest:
    return EditRequest(
        source_prompt=PROMPTS[0], target_prompt=PROMPTS[0].replace("red", "green"), layers=(1, 2, 3), window=2,
        out=out, **SMALL, **fields,
    )  # fmt: skip


@pytest.mark.ray
@pytest.mark.slow
def test_ray_sinks_gives_the_local_tables(cluster: str, tmp_path: Path) -> None:
    local = run_sinks(sinks_request(tmp_path / "local"))
    messages: list[str] = []
    remote = run_sinks(
        sinks_request(tmp_path / "ray", executor="ray", address=cluster), lambda m, d, t: messages.append(m)
    )
    assert (local / "sink_ablation.parquet").is_file(), "the ablation phase should run on this model"
    for name in SINK_TABLES:
        pd.testing.assert_frame_equal(
            pd.read_parquet(remote / f"{name}.parquet"), pd.read_parquet(local / f"{name}.parquet")
        )
    runs = [json.loads((d / "run.json").read_text()) for d in (local, remote)]
    assert [run["executor"] for run in runs] == ["local", "ray"] and runs[0]["layout"] == runs[1]["layout"]
    assert any(m.startswith("generations 2/2") and "cells per worker: w1 " in m for m in messages), messages
    assert any(m.startswith("ablations 4/4") for m in messages), messages
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.ray
@pytest.mark.slow
def test_ray_edit_sweep_gives_the_local_table(cluster: str, tmp_path: Path) -> None:
    _, local = run_edit_sweep(edit_request(tmp_path / "local"))
    out, remote = run_edit_sweep(edit_request(tmp_path / "ray", executor="ray", address=cluster))
    assert list(local["layers"]) == ["none", "1,2", "2,3"]
    pd.testing.assert_frame_equal(remote, local)
    pd.testing.assert_frame_equal(pd.read_parquet(out / "edit_sweep.parquet"), local)
