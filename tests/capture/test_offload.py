"""Capture and interventions under diffusers group offloading and accelerate's CPU offload hooks.

Each offloading mode runs here with the CPU as its device: group offloading (block and leaf level, weights
on the CPU or on disk), ``enable_model_cpu_offload(device="cpu")`` and, for sequential offload, accelerate's
``cpu_offload`` on each component as ``enable_sequential_cpu_offload`` applies it (the pipeline method itself
fails on a CPU device: it names the device ``cpu:0`` and accelerate then turns the weights it moves into plain
tensors). Streams (``use_stream``) and the sequential pipeline method need CUDA: tested where it is there.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from accelerate import cpu_offload
from diffusers.hooks import apply_group_offloading

from vditscope import capture
from vditscope.adapters.loading import load_pipeline
from vditscope.adapters.placement import COMPILES, OFFLOADS
from vditscope.capture.intervene import AttentionEdit, intervene

from ..families import ALL_FAMILIES, FamilyCase
from ..in_process import run_main

SMALL = {"num_frames": 9, "num_inference_steps": 2, "height": 32, "width": 32, "guidance_scale": 4.0}
PROMPT = "a red square moving left"
EDIT = AttentionEdit(bottom_k=0.5, layers=frozenset({1, 2}))
CPU = torch.device("cpu")
HOOK_ATTRIBUTES = ("forward", "_old_forward", "_hf_hook", "_diffusers_hook")


def sequential(pipe: Any, device: torch.device) -> None:
    """accelerate's hooks of ``enable_sequential_cpu_offload`` on each component, with ``device`` as given."""
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            cpu_offload(component, device, offload_buffers=len(component._parameters) > 0)


def group(disk: bool = False, **options: Any) -> Callable[[Any, Path], None]:
    """Group offloading of the transformer with ``options`` (weights on the CPU, or on disk with ``disk``)."""

    def apply(pipe: Any, tmp_path: Path) -> None:
        extra = {"offload_to_disk_path": str(tmp_path)} if disk else {}
        pipe.transformer.enable_group_offload(CPU, CPU, **options, **extra)

    return apply


MODES: dict[str, Callable[[Any, Path], None]] = {
    "group-block": group(offload_type="block_level", num_blocks_per_group=1),
    "group-block-disk": group(offload_type="block_level", num_blocks_per_group=2, disk=True),
    "group-leaf": group(offload_type="leaf_level"),
    "model": lambda pipe, _: pipe.enable_model_cpu_offload(device="cpu"),
    "sequential": lambda pipe, _: sequential(pipe, CPU),
}


def generate(pipe: Any, device: str = "cpu") -> np.ndarray:
    generator = torch.Generator(device).manual_seed(0)
    return pipe(prompt=PROMPT, generator=generator, output_type="np", max_sequence_length=16, **SMALL).frames[0]


def observed(pipe: Any, generations: int = 2, edits: tuple[AttentionEdit, ...] = ()) -> dict[str, Any]:
    """Frames, capture table and (with ``edits``) the intervention's tables of generations in one session."""
    with ExitStack() as stack:
        cap = stack.enter_context(capture(pipe))
        edited = stack.enter_context(intervene(pipe, edits)) if edits else None
        frames = [generate(pipe, str(pipe._execution_device)) for _ in range(generations)]
    if edited is None:
        return {"frames": frames, "table": cap.table()}
    totals = (edited.totals.entries, edited.totals.dropped, edited.totals.mass)
    return {"frames": frames, "table": cap.table(), "edits": edited.edit_table(), "totals": totals}


def max_difference(a: pd.DataFrame, b: pd.DataFrame) -> float:
    """Largest absolute difference between two tables' numbers (same columns and rows required)."""
    assert list(a.columns) == list(b.columns) and len(a) == len(b) > 0
    assert (a.select_dtypes(exclude="number").values == b.select_dtypes(exclude="number").values).all()
    numeric = a.select_dtypes("number").columns
    x, y = a[numeric].to_numpy(float), b[numeric].to_numpy(float)
    assert (np.isnan(x) == np.isnan(y)).all()
    return float(np.nanmax(np.abs(x - y)))


def describe(function: Any) -> str | None:
    """A forward attribute as the function it runs (bound methods and partials by qualified name)."""
    if function is None:
        return None
    target = getattr(function, "func", None) or getattr(function, "__func__", None) or function
    return getattr(target, "__qualname__", type(target).__name__)


def traces(model: torch.nn.Module) -> dict[str, tuple]:
    """Per module: its hook attributes, what its forward and accelerate's inner forward run, its hooks."""
    found = {}
    for name, module in model.named_modules():
        attributes = module.__dict__
        registry = attributes.get("_diffusers_hook")
        found[name] = (
            sorted(key for key in attributes if key in HOOK_ATTRIBUTES),
            describe(attributes.get("forward")),
            describe(attributes.get("_old_forward")),
            type(attributes.get("_hf_hook")).__name__,
            None if registry is None else list(registry._hook_order),
        )
    return found


@pytest.fixture(scope="module")
def plain() -> dict[str, Any]:
    """The un-offloaded tiny pipeline's frames, capture table (two generations) and an intervention's tables."""
    pipe, _, _ = load_pipeline("tiny-wan", "cpu")
    return {"frames": generate(pipe), "capture": observed(pipe), "edited": observed(pipe, 1, (EDIT,))}


@pytest.mark.parametrize("mode", list(MODES))
def test_capture_under_offloading_matches_and_leaves_the_offload_hooks(
    plain: dict[str, Any], mode: str, tmp_path: Path
) -> None:
    """Two generations in one session (model offload re-adds its hooks after each): the same frames and the
    same table as without offloading; after it, the modules hold the offload hooks as before and nothing else."""
    pipe, _, _ = load_pipeline("tiny-wan", "cpu")
    MODES[mode](pipe, tmp_path)
    assert np.array_equal(generate(pipe), plain["frames"])
    before = traces(pipe.transformer)
    assert any(hooks != ([], None, None, "NoneType", None) for hooks in before.values())  # offloaded
    result = observed(pipe)
    assert all(np.array_equal(frames, plain["frames"]) for frames in result["frames"])
    assert set(result["table"].generation) == {0, 1}
    assert max_difference(result["table"], plain["capture"]["table"]) == 0.0
    assert F.scaled_dot_product_attention is torch._C._nn.scaled_dot_product_attention
    assert traces(pipe.transformer) == before
    assert np.array_equal(generate(pipe), plain["frames"])  # the offload hooks still run the model
    if mode == "sequential":  # accelerate put the weights back on the meta device after the last call
        assert pipe.transformer.blocks[0].attn1.to_q.weight.device.type == "meta"


@pytest.mark.parametrize("mode", list(MODES))
def test_an_edit_under_offloading_matches(plain: dict[str, Any], mode: str, tmp_path: Path) -> None:
    """An intervention (nested in a capture) edits the same calls to the same frames and tables."""
    pipe, _, _ = load_pipeline("tiny-wan", "cpu")
    MODES[mode](pipe, tmp_path)
    before = traces(pipe.transformer)
    result, reference = observed(pipe, 1, (EDIT,)), plain["edited"]
    assert not np.array_equal(reference["frames"][0], plain["frames"])  # the edit changes the video
    assert np.array_equal(result["frames"][0], reference["frames"][0])
    assert max_difference(result["table"], reference["table"]) == 0.0
    assert max_difference(result["edits"], reference["edits"]) == 0.0
    assert result["totals"] == reference["totals"]
    assert traces(pipe.transformer) == before
    assert np.array_equal(generate(pipe), plain["frames"])


def test_model_offload_switched_on_and_off_inside_a_session(plain: dict[str, Any]) -> None:
    """Offload hooks added while a session is open stay after it; hooks removed while it is open stay removed."""
    pipe, _, _ = load_pipeline("tiny-wan", "cpu")
    transformer = pipe.transformer
    with capture(pipe) as cap:
        pipe.enable_model_cpu_offload(device="cpu")
        frames = [generate(pipe) for _ in range(2)]
    assert all(np.array_equal(f, plain["frames"]) for f in frames)
    assert max_difference(cap.table(), plain["capture"]["table"]) == 0.0
    assert describe(transformer.forward) == "add_hook_to_module.<locals>.new_forward"  # accelerate's, outermost
    assert describe(transformer._old_forward) == "WanTransformer3DModel.forward"
    with capture(pipe) as cap:
        pipe.remove_all_hooks()
        frames = generate(pipe)
    assert np.array_equal(frames, plain["frames"])
    first = plain["capture"]["table"]
    assert max_difference(cap.table(), first[first.generation == 0]) == 0.0
    assert describe(transformer.forward) == "WanTransformer3DModel.forward"
    assert not {"_old_forward", "_hf_hook"} & set(transformer.__dict__)


def offload_model(model: torch.nn.Module, mode: str) -> None:
    """A bare transformer under group offloading (block or leaf level) or accelerate's sequential hooks."""
    if mode == "sequential":
        cpu_offload(model, CPU, offload_buffers=len(model._parameters) > 0)
    else:
        apply_group_offloading(model, CPU, CPU, offload_type=mode, num_blocks_per_group=1)


def forward(case: FamilyCase) -> torch.Tensor:
    with torch.no_grad():
        return case.model(**case.inputs, return_dict=False)[0]


@pytest.mark.parametrize("mode", ["block_level", "leaf_level", "sequential"])
@pytest.mark.parametrize("make", ALL_FAMILIES, ids=lambda make: make.__name__.removeprefix("make_"))
def test_bare_transformers_of_every_family_under_offloading(make: Callable[[], FamilyCase], mode: str) -> None:
    """capture() on an offloaded transformer: the same output and table; its hooks gone, the offload's kept."""
    case = make()
    reference = forward(case)
    with capture(case.model) as cap:
        forward(case)
    offload_model(case.model, mode)
    assert torch.equal(forward(case), reference)
    before = traces(case.model)
    with capture(case.model) as offloaded:
        output = forward(case)
    assert torch.equal(output, reference)
    assert max_difference(offloaded.table(), cap.table()) == 0.0
    assert traces(case.model) == before
    assert torch.equal(forward(case), reference)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the pipeline methods and streams")
@pytest.mark.parametrize("mode", ["model", "sequential", "group-stream"])
def test_cuda_offloading_through_the_pipeline_methods(mode: str) -> None:
    """On a GPU: enable_model_cpu_offload, enable_sequential_cpu_offload and group offloading with streams
    capture the same table (float tolerance: offloaded kernels may differ) as the pipeline on the GPU."""
    pipe, _, _ = load_pipeline("tiny-wan", "cuda")
    reference = observed(pipe)
    pipe.to("cpu")
    if mode == "group-stream":
        pipe.transformer.enable_group_offload(
            torch.device("cuda"), CPU, offload_type="block_level", num_blocks_per_group=1, use_stream=True
        )
        for name in ("text_encoder", "vae"):
            pipe.components[name].to("cuda")
    else:
        getattr(pipe, f"enable_{mode}_cpu_offload")(device="cuda")
    before = traces(pipe.transformer)
    result = observed(pipe)
    for frames in result["frames"]:
        np.testing.assert_allclose(frames, reference["frames"][0], atol=1e-4, rtol=0)
    assert max_difference(result["table"], reference["table"]) < 1e-4
    assert traces(pipe.transformer) == before


ANALYZE = ["analyze", "--prompt", PROMPT, "--seed", "0", "--map-tiles", "16", "--num-frames", "9", "--steps", "2",
           "--height", "32", "--width", "32", "--device", "cpu"]  # fmt: skip


def test_analyze_with_offload_group_writes_the_same_statistics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`vditscope analyze --offload group` (and model): the same stats.parquet and videos as without it."""
    runs = {}
    for offload in ("none", "group", "model"):
        out = tmp_path / offload
        code, err = run_main([*ANALYZE, "--offload", offload, "--out", str(out)], capsys, monkeypatch)
        assert code == 0, err
        runs[offload] = pd.read_parquet(out / "stats.parquet"), (out / "videos.safetensors").read_bytes()
        assert json.loads((out / "run.json").read_text())["device"] == "cpu"
    stats, videos = runs["none"]
    for offload in ("group", "model"):
        assert max_difference(runs[offload][0], stats) == 0.0
        assert runs[offload][1] == videos


def test_offload_choices_are_checked_before_anything_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unknown --offload, or sequential on the CPU, stops in one line (exit 2) with nothing written."""
    from vditscope import cli_options

    assert cli_options.OFFLOADS == OFFLOADS and cli_options.COMPILES == COMPILES
    code, err = run_main([*ANALYZE, "--offload", "disk", "--out", str(tmp_path / "a")], capsys, monkeypatch)
    assert code == 2 and err == "error: --offload must be none, model, sequential or group, got disk\n", err
    code, err = run_main([*ANALYZE, "--offload", "sequential", "--out", str(tmp_path / "b")], capsys, monkeypatch)
    assert code == 2 and err.count("\n") == 1 and "needs an accelerator" in err, err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "command", ["analyze", "generate", "edit", "edit-sweep", "text-ablation", "sinks", "sweep sparsity"]
)
def test_every_generating_command_takes_offload(command: str) -> None:
    from typer.main import get_command

    from vditscope.cli import app

    click_command = get_command(app)
    for name in command.split():
        click_command = click_command.commands[name]  # type: ignore[attr-defined]
    assert "--offload" in {opt for param in click_command.params for opt in param.opts}
