"""Capture under diffusers' context parallelism, two CPU processes over gloo: Ulysses gives every rank the
complete table of the single-process run; ring attention is refused in one line."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp

from tests import families
from vditscope.capture import capture
from vditscope.capture.context_parallel import HeadShards, merge_head_shards, rank_share
from vditscope.capture.edits import AttentionEdit
from vditscope.capture.intervene import intervene
from vditscope.errors import VditscopeError

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built")
WORLD = 2
# heads 1 and 2: one on each rank under Ulysses; bottom-k and a structured mask
EDITS = (
    AttentionEdit(bottom_k=0.5, heads=frozenset({1, 2}), layers=frozenset({0})),
    AttentionEdit(mask="spatial", layers=frozenset({1})),
)


def tiny_wan() -> tuple[torch.nn.Module, dict]:
    """The tests' tiny Wan with 4 heads (2 per rank) and one forward's inputs: 3 x 4 x 5 = 60 video tokens, 7
    text tokens."""
    g = torch.Generator().manual_seed(1)
    inputs = {
        "hidden_states": torch.randn(1, 4, 3, 8, 10, generator=g),
        "encoder_hidden_states": torch.randn(1, 7, 16, generator=g),
        "timestep": torch.tensor([500]),
        "return_dict": False,
    }
    return families.tiny_wan(0, num_attention_heads=4), inputs


def _rank_main(rank: int, mode: str, store: str, out: str) -> None:
    """One rank: Wan under Ulysses or ring with degree 2, capture, and rank 0 writes the table (or the error)."""
    import warnings

    import torch.distributed as dist
    from diffusers import ContextParallelConfig

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    # diffusers picks the device as rank % accelerator count, which is 0 on a CPU-only torch
    torch.accelerator.device_count = lambda: 1
    try:
        model, inputs = tiny_wan()
        model.enable_parallelism(config=ContextParallelConfig(**{f"{mode}_degree": WORLD}))
        try:
            with torch.no_grad(), capture(model, map_tiles=16) as cap:
                output = model(**inputs)[0]
        except VditscopeError as exc:
            Path(f"{out}.{rank}.err").write_text(str(exc))
            return
        with torch.no_grad(), intervene(model, EDITS) as edited:
            edited_output = model(**inputs)[0]
        cap.table().to_parquet(f"{out}.{rank}.parquet")
        edited.edit_table().to_parquet(f"{out}.{rank}.edits.parquet")
        saved = {"output": output, "maps": [r.maps for r in cap.records], "edited": edited_output}
        torch.save({**saved, "totals": torch.tensor(list(vars(edited.totals).values()))}, f"{out}.{rank}.pt")
    finally:
        dist.destroy_process_group()


def _run_ranks(mode: str, tmp_path: Path) -> Path:
    out = tmp_path / mode
    mp.spawn(_rank_main, args=(mode, str(tmp_path / f"{mode}.store"), str(out)), nprocs=WORLD, join=True)
    return out


@pytest.fixture(scope="module")
def single() -> tuple[pd.DataFrame, dict]:
    model, inputs = tiny_wan()
    with torch.no_grad(), capture(model, map_tiles=16) as cap:
        output = model(**inputs)[0]
    with torch.no_grad(), intervene(model, EDITS) as edited:
        edited_output = model(**inputs)[0]
    saved = {"output": output, "maps": [r.maps for r in cap.records], "edited": edited_output}
    totals = torch.tensor(list(vars(edited.totals).values()))
    return cap.table(), {**saved, "totals": totals, "edits": edited.edit_table()}


def test_ulysses_ranks_hold_the_single_process_table(single, tmp_path: Path) -> None:
    table, reference = single
    out = _run_ranks("ulysses", tmp_path)
    for rank in range(WORLD):
        got = pd.read_parquet(f"{out}.{rank}.parquet")
        assert len(got) == len(table) == 2 * 2 * 4  # layers x (self, cross) x heads
        numeric = got.select_dtypes("number").columns
        pd.testing.assert_frame_equal(got.drop(columns=numeric), table.drop(columns=numeric))
        pd.testing.assert_frame_equal(got[numeric], table[numeric], rtol=0, atol=2e-6)
        saved = torch.load(f"{out}.{rank}.pt")
        torch.testing.assert_close(saved["output"], reference["output"], rtol=0, atol=1e-5)
        torch.testing.assert_close(saved["edited"], reference["edited"], rtol=0, atol=1e-5)
        assert not torch.allclose(saved["edited"], saved["output"], atol=1e-3)  # the edits changed the output
        torch.testing.assert_close(saved["totals"], reference["totals"], rtol=1e-6, atol=1e-6)
        edits = pd.read_parquet(f"{out}.{rank}.edits.parquet")
        pd.testing.assert_frame_equal(edits, reference["edits"], rtol=0, atol=2e-6)
        assert sorted(set(edits[edits.layer == 0]["head"])) == [1, 2] and len(edits[edits.layer == 1]) == 4
        for maps, expected in zip(saved["maps"], reference["maps"], strict=True):
            assert maps.keys() == expected.keys() and maps
            for name in maps:
                torch.testing.assert_close(maps[name], expected[name], rtol=0, atol=2e-6)


def test_ring_attention_is_refused_in_one_line(tmp_path: Path) -> None:
    out = _run_ranks("ring", tmp_path)
    for rank in range(WORLD):
        message = Path(f"{out}.{rank}.err").read_text()
        assert "ring attention (ring_degree=2)" in message and "ulysses_degree=N" in message
        assert "\n" not in message


class _FakeGroup(HeadShards):
    """A simulated group of ``degree`` ranks: gathering a shard returns the full tensor of its shape."""

    def __init__(self, rank: int, degree: int, *full: torch.Tensor) -> None:
        super().__init__(degree, rank, None)
        object.__setattr__(self, "full", full)

    def gather_sequence(self, tensor: torch.Tensor, dim: int = 2) -> torch.Tensor:
        (match,) = [
            t for t in self.full if t.shape[dim] == tensor.shape[dim] * self.degree and t.shape[-1] == tensor.shape[-1]
        ]
        return match


def test_rank_share_of_a_query_shard_and_of_a_head_shard() -> None:
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 6, n, 8, generator=g) for n in (10, 5, 5))
    mask = torch.rand(2, 6, 10, 5, generator=g) > 0.3
    for rank in range(2):
        shards = _FakeGroup(rank, 2, q, mask)
        rows = slice(5 * rank, 5 * rank + 5)
        share = rank_share(shards, q[:, :, rows], k, v, mask[:, :, rows], heads=6)
        heads = slice(3 * rank, 3 * rank + 3)
        assert share.first_head == 3 * rank and torch.equal(share.q, q[:, heads]) and torch.equal(share.k, k[:, heads])
        assert share.attn_mask is not None and torch.equal(share.attn_mask, mask[:, heads])
        head_shard = rank_share(shards, q[:, heads], k[:, heads], v[:, heads], None, heads=6)
        assert head_shard.first_head == 3 * rank and head_shard.q is not None and head_shard.q.shape[1] == 3
    with pytest.raises(VditscopeError, match="fits neither a head nor a query shard of 6"):
        rank_share(_FakeGroup(0, 2, q), q[:, :4], k, v, None, heads=6)


def test_merging_records_of_different_calls_is_refused() -> None:
    assert merge_head_shards([[], []]) == []
    with pytest.raises(VditscopeError, match="recorded different attention calls"):
        from types import SimpleNamespace

        record = SimpleNamespace(generation=0, step=0, branch="cond", sample=0, layer=0, kind="self", site="a")
        merge_head_shards([[record], []])


def test_analyze_under_torchrun_writes_the_single_process_statistics_once(tmp_path: Path) -> None:
    """``torchrun --nproc-per-node 2 -m vditscope.cli analyze --context-parallel 2`` on the CPU (gloo), tiny-wan (Wan
    has a context-parallel plan, CogVideoX none): the run
    rank 0 writes holds the statistics of a one-process run; rank 1 leaves nothing behind."""
    import subprocess
    import sys

    args = ["analyze", "--model", "tiny-wan", "--device", "cpu", "--seed", "0",
            "--prompt", "a red square moving left on a black background",
            "--num-frames", "5", "--steps", "2", "--height", "32", "--width", "32", "--map-tiles", "16"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    parallel = subprocess.run(
        [*launch, "-m", "vditscope.cli", *args, "--context-parallel", "2", "--out", str(tmp_path / "cp")],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert parallel.returncode == 0, parallel.stderr[-3000:]
    single = subprocess.run(
        [sys.executable, "-m", "vditscope.cli", *args, "--out", str(tmp_path / "one")],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]
    assert parallel.stdout.count("wrote ") == 1  # rank 0 alone prints
    got, expected = (pd.read_parquet(tmp_path / name / "stats.parquet") for name in ("cp", "one"))
    numeric = expected.select_dtypes("number").columns
    pd.testing.assert_frame_equal(got.drop(columns=numeric), expected.drop(columns=numeric))
    pd.testing.assert_frame_equal(got[numeric], expected[numeric], rtol=0, atol=1e-5)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("vditscope-rank")]
