"""Memory planning (issue 16, item 6): the statistics' working set against peaks measured with torch's profiler,
the chunk chooser within its budget, token counts against the published figures, the refusal of a run that
cannot fit before any weight loads (and its escape), run.json's estimate and peak, and `vditscope memory`."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

import vditscope
from vditscope.adapters.published import PUBLISHED
from vditscope.adapters.token_counts import config_with_defaults, token_counts
from vditscope.analyses.memory_plan import (
    SKIP_ENV,
    MemoryRequest,
    ModelShape,
    estimate_memory,
    plan_memory,
)
from vditscope.layout import TokenLayout
from vditscope.stats import attention_stats
from vditscope.stats.basics import offset_index
from vditscope.stats.working_set import CallShape, choose_chunk_size, statistics_bytes, workers_for

from ..in_process import run_main, run_main_output


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    """(exit code, stdout and stderr) of ``vditscope ARGV`` in this process."""
    code, out, err = run_main_output(argv, capsys, monkeypatch)
    return code, out + err


SMALL = ["--num-frames", "9", "--steps", "2", "--height", "32", "--width", "32", "--seed", "0"]
# the estimate of one statistics call is at least the measured peak and at most this factor above it
STATISTICS_FACTOR = 1.4
# the activation bound is at least the measured peak of one transformer call and at most this factor above it
ACTIVATION_FACTOR = 1.6


def profiled_peak(run: Callable[[], Any]) -> int:
    """Peak bytes torch's CPU allocator holds above the start while ``run()`` runs (the profiler's memory
    events in time order; allocations made on this thread, so call it with one torch thread)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events = prof.profiler.kineto_results.events()  # type: ignore[union-attr]
    changes = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    held = peak = 0
    for _, size in changes:
        held += size
        peak = max(peak, held)
    return peak


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread (the profiler sees the calling thread's allocations; the estimate counts one worker)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


CASES = [
    # frames, height, width, text tokens, heads, head dim, chunk, top mass, output, dtype
    (3, 5, 7, 0, 2, 16, 64, "auto", False, torch.float32),
    (7, 10, 9, 12, 2, 16, 128, "auto", False, torch.bfloat16),
    (9, 11, 13, 0, 2, 24, 200, "exact", True, torch.float32),
    (13, 12, 14, 0, 2, 16, None, "auto", False, torch.float32),  # 2,184 queries: sampled top-k rows
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}x{c[1]}x{c[2]}+{c[3]}-{c[7]}-{str(c[9])[6:]}")
def test_statistics_estimate_bounds_the_measured_peak(case: tuple, one_thread: None) -> None:
    frames, height, width, text, heads, dim, chunk, top_mass, output, dtype = case
    video = frames * height * width
    n = video + text
    layout = TokenLayout(frames, height, width, text=(video, n) if text else None)
    q, k, v = torch.randn(3, 1, heads, n, dim, generator=torch.Generator().manual_seed(0)).to(dtype).unbind(0)
    offset_index.cache_clear()  # the estimate counts building the frame's offset index

    def run() -> None:
        attention_stats(
            q, k, v, layout=layout, chunk_size=chunk, top_mass=top_mass, compute_output=output, map_tiles=16
        )

    measured = profiled_peak(run)
    shape = CallShape(1, heads, n, n, dim, layout=layout, map_tiles=16, itemsize=q.element_size())
    estimate = statistics_bytes(shape, chunk, top_mass=top_mass, compute_output=output)
    assert measured <= estimate <= STATISTICS_FACTOR * measured, (measured, estimate, estimate / measured)


def test_workers_follow_the_threads_the_torch_path_uses() -> None:
    large = CallShape(1, 4, 2048, 2048, 32)
    assert workers_for(large, "cpu", threads=2) == 2 and workers_for(large, "cpu", threads=8) == 4
    assert workers_for(large, "cuda", threads=8) == 1
    assert workers_for(CallShape(1, 4, 100, 100, 32), "cpu", threads=8) == 1  # too small for the pool
    two = statistics_bytes(large, 256, threads=2, top_mass="off")
    one = statistics_bytes(large, 256, threads=1, top_mass="off")
    assert two - one >= 2 * 256 * 2048 * 4  # a second worker's score and probability buffers


def test_chunk_chooser_respects_the_budget(one_thread: None) -> None:
    layout = TokenLayout(9, 10, 11)
    n = layout.num_video
    shape = CallShape(1, 2, n, n, 16, layout=layout)
    full = statistics_bytes(shape)  # the default chunk: every query row here
    assert choose_chunk_size(full, shape) == n and choose_chunk_size(10 * full, shape) == n
    budget = full // 3
    rows = choose_chunk_size(budget, shape)
    assert rows is not None and 64 <= rows < n
    assert statistics_bytes(shape, rows) <= budget < statistics_bytes(shape, rows + 1)
    assert choose_chunk_size(statistics_bytes(shape, 64) - 1, shape) is None  # not even 64 rows fit
    q, k, v = torch.randn(3, 1, 2, n, 16, generator=torch.Generator().manual_seed(1)).unbind(0)
    offset_index.cache_clear()
    measured = profiled_peak(lambda: attention_stats(q, k, v, layout=layout, chunk_size=rows, compute_output=False))
    assert measured <= budget


@pytest.mark.parametrize(
    ("name", "height", "width", "frames", "grid", "text"),
    [  # the token counts DESIGN.md states for the real checkpoints
        ("Wan2.1-T2V-1.3B", 480, 832, 81, (21, 30, 52), 0),
        ("Mochi-1-preview", 480, 848, 163, (28, 30, 53), 256),
        ("HunyuanVideo", 720, 1280, 129, (33, 45, 80), 256),
        ("CogVideoX-5b", 480, 720, 49, (13, 30, 45), 226),
    ],
)
def test_token_counts_of_published_checkpoints(
    name: str, height: int, width: int, frames: int, grid: tuple, text: int
) -> None:
    model = PUBLISHED[name]
    transformer = config_with_defaults(model.transformer_class, model.transformer)
    vae = config_with_defaults(model.vae_class, model.vae)
    size = {"height": height, "width": width, "num_frames": frames, "guidance_scale": 5.0}
    counts = token_counts(model.family, transformer, vae, size, model.text_tokens)
    assert counts.grid == grid and counts.joint_text == text


def test_token_counts_match_a_captured_generation_of_the_joint_model() -> None:
    from diffusers import DiffusionPipeline

    from vditscope.adapters.settings import model_settings

    model_dir = vditscope.tiny_model_dir("tiny-cogvideox")
    generation = {**model_settings(model_dir)["generation"], "num_inference_steps": 1, "num_frames": 9, "width": 64}
    pipe = DiffusionPipeline.from_pretrained(model_dir, use_safetensors=True)
    with vditscope.capture(pipe, layers=[0]) as cap:
        pipe(prompt="a red square moving left on a black background", output_type="np", **generation)
    record = next(r for r in cap.records if r.kind == "self")
    shape = ModelShape.from_directory(model_dir)
    counts = token_counts(shape.family, shape.transformer, shape.vae, generation, shape.text_tokens)
    assert counts.grid == record.layout.grid and counts.self_tokens == record.tokens
    assert counts.branches == len({r.branch for r in cap.records}) == 2


@pytest.mark.parametrize("name", ["tiny-wan", "tiny-cogvideox"])
def test_activation_bound_holds_for_one_transformer_call(name: str, one_thread: None) -> None:
    from diffusers import DiffusionPipeline

    model_dir = vditscope.tiny_model_dir(name)
    transformer = DiffusionPipeline.from_pretrained(model_dir, use_safetensors=True).transformer
    shape = ModelShape.from_directory(model_dir)
    generation = {"height": 48, "width": 80, "num_frames": 11, "guidance_scale": 4.0, "max_sequence_length": 16}
    estimate = estimate_memory(shape, MemoryRequest(generation))
    frames, height, width = estimate.tokens.grid
    batch, channels = estimate.tokens.batch, transformer.config.in_channels
    latents = (batch, channels, frames, 2 * height, 2 * width)  # the tiny VAE's spatial factor is 2
    if shape.family == "cogvideox":
        latents = (batch, frames, channels, 2 * height, 2 * width)
    inputs = {
        "hidden_states": torch.randn(latents),
        "timestep": torch.full((batch,), 500),
        "encoder_hidden_states": torch.randn(batch, 16, transformer.config.get("text_dim", 64)),
    }
    with torch.no_grad():
        measured = profiled_peak(lambda: transformer(**inputs))
    assert measured <= estimate.activations <= ACTIVATION_FACTOR * measured, (measured, estimate.activations)


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Loading a pipeline is recorded and stopped with one line (what the check must come before)."""
    calls: list[str] = []

    def load(model: Any, *args: Any, **kwargs: Any) -> None:
        calls.append(str(model))
        raise vditscope.errors.VditscopeError("the loader was reached")

    monkeypatch.setattr("vditscope.adapters.loaded.load_pipeline", load)
    return calls


def tiny_available(monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    """Pretend the host has ``size`` bytes of RAM free."""
    monkeypatch.setattr("vditscope.analyses.memory_plan.host_available", lambda: (size, "test"))


@pytest.mark.parametrize("command", [["analyze"], ["generate"], ["sweep", "sparsity", "--k", "0.5"]])
def test_a_run_that_cannot_fit_is_refused_before_loading(
    command: list[str],
    loads: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(SKIP_ENV, raising=False)
    tiny_available(monkeypatch, 2**20)
    out = tmp_path / "out"
    code, err = run_main([*command, *SMALL, "--out", str(out)], capsys, monkeypatch)
    assert code == 2 and err.count("\n") == 1, err
    assert "needs about" in err and "1.0 MiB is free" in err and f"{SKIP_ENV}=1" in err, err
    assert loads == [] and not out.exists()
    # the escape: the check is skipped and the run goes on to load the model
    monkeypatch.setenv(SKIP_ENV, "1")
    code, err = run_main([*command, *SMALL, "--out", str(out)], capsys, monkeypatch)
    assert code == 2 and "the loader was reached" in err and len(loads) == 1, err


def test_a_tight_budget_fits_the_chunk_instead_of_refusing(monkeypatch: pytest.MonkeyPatch) -> None:
    shape = ModelShape.from_directory(vditscope.tiny_model_dir("tiny-wan"))
    generation = {"height": 32, "width": 64, "num_frames": 9, "num_inference_steps": 2, "guidance_scale": 4.0}
    request = MemoryRequest(generation, map_tiles=16, map_steps=2, threads=1)
    default = estimate_memory(shape, request)
    small = estimate_memory(shape, replace(request, chunk_size=128))
    tiny_available(monkeypatch, small.device_bytes)
    plan = plan_memory(shape, request)
    assert default.chunk_size == 640 and plan.chunk_size is not None and 128 <= plan.chunk_size < 640
    assert plan.estimate.device_bytes <= small.device_bytes and plan.checked


def test_run_json_holds_the_estimate_and_the_measured_peak(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, one_thread: None
) -> None:
    """A tiny analyze run with the memory just too tight for the default chunk: it runs with the fitted chunk,
    and run.json records the estimate, what was free and the peak."""
    from vditscope.capture import recorder

    monkeypatch.delenv(SKIP_ENV, raising=False)
    from vditscope.adapters.settings import model_settings

    shape = ModelShape.from_directory(vditscope.tiny_model_dir())
    small = {"height": 32, "width": 32, "num_frames": 9, "num_inference_steps": 2}
    generation = {**model_settings(vditscope.tiny_model_dir())["generation"], **small}  # as analyze asks
    request = MemoryRequest(generation, layers=[0, 1], map_tiles=16, map_steps=2, generations=1, threads=1)
    tight = estimate_memory(shape, replace(request, chunk_size=300)).device_bytes
    tiny_available(monkeypatch, tight)
    chunks: list[int | None] = []
    stats = recorder.attention_stats

    def spy(*args: Any, **kwargs: Any) -> Any:
        chunks.append(kwargs.get("chunk_size"))
        return stats(*args, **kwargs)

    monkeypatch.setattr(recorder, "attention_stats", spy)
    out = tmp_path / "run"
    argv = ["analyze", *SMALL, "--layers", "0,1", "--map-tiles", "16", "--prompt", "a red square", "--out", str(out)]
    code, err = run_main(argv, capsys, monkeypatch)
    assert code == 0, err
    run = json.loads((out / "run.json").read_text())
    memory = run["memory"]
    estimate = memory["estimate"]
    assert memory["checked"] and memory["available"]["host"] == tight
    assert memory["chunk_size"] == 300 and set(chunks) == {300}  # the largest chunk that fits
    assert estimate["tokens"]["grid"] == run["layout"]["grid"] and estimate["tokens"]["frames"] == 9
    assert estimate["device_bytes"] <= tight and estimate["weights"]["transformer"] > 0
    with safe_open(str(out / "videos.safetensors"), "pt") as videos:
        stored = sum(math.prod(videos.get_slice(name).get_shape()) * 4 for name in videos.keys())  # noqa: SIM118
    assert estimate["videos"] == stored
    with safe_open(str(out / "maps.safetensors"), "pt") as maps:
        names = list(maps.keys())
        kept = sum(maps.get_tensor(name).numel() * maps.get_tensor(name).element_size() for name in names)
    assert kept <= estimate["maps"]
    peak = memory["peak"]
    assert peak["host_bytes"] >= memory["host_baseline_bytes"] > 0 and peak["device_bytes"] is None


def test_memory_command_prints_the_tiny_model_and_a_published_one(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out = run_cli(["memory", "--layers", "0,1"], capsys, monkeypatch)
    assert code == 0 and "9 x 8 x 8 video + 16 text = 592 per self-attention call" in out, out
    assert "weights: transformer" in out and "maps kept" in out and "fits what is free now" in out
    argv = ["memory", "--published", "Wan2.1-T2V-1.3B", "--device", "cuda", "--dtype", "bfloat16"]
    code, out = run_cli(argv, capsys, monkeypatch)
    assert code == 0 and "21 x 30 x 52 video + 0 text = 32,760" in out and "total on cuda" in out, out
    transformer = next(line for line in out.splitlines() if "weights: transformer" in line)
    assert "2.64 GiB" in transformer  # 1.42e9 parameters in bfloat16
    code, out = run_cli(["memory", "--published", "Wan9"], capsys, monkeypatch)
    assert code == 2 and "unknown published model Wan9" in out and out.count("\n") == 1, out
    code, out = run_cli(["memory", "--published", "CogVideoX-2b", "--model", "tiny-wan"], capsys, monkeypatch)
    assert code == 2 and "not both" in out and out.count("\n") == 1, out
