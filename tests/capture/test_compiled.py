"""Capture and interventions on compiled models: torch.compile of the whole transformer and diffusers'
regional compilation (compile_repeated_blocks, fullgraph=True). Dynamo's "eager" backend traces and
breaks graphs as Inductor does, without Inductor's compile time; one test runs Inductor (slow)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vditscope import capture
from vditscope.adapters.loading import load_pipeline
from vditscope.capture.compiled import compiled_in_place
from vditscope.capture.intervene import AttentionEdit, intervene

SMALL = {"num_frames": 9, "num_inference_steps": 2, "height": 32, "width": 32, "guidance_scale": 4.0}


def generate(pipe) -> np.ndarray:
    generator = torch.Generator().manual_seed(0)
    return pipe(prompt="a red square moving left", generator=generator, output_type="np", **SMALL).frames[0]


def captured(pipe) -> tuple[np.ndarray, object]:
    with capture(pipe, layers=[1, 3]) as cap:
        frames = generate(pipe)
    return frames, cap.table()


@pytest.fixture
def pipe():
    torch._dynamo.reset()
    pipeline, _, _ = load_pipeline("tiny-wan", "cpu")
    yield pipeline
    torch._dynamo.reset()


def assert_same_tables(a, b, atol: float = 0.0) -> None:
    assert list(a.columns) == list(b.columns) and len(a) == len(b) > 0
    numeric = a.select_dtypes("number").columns
    assert ((a[numeric] - b[numeric]).abs().max() <= atol).all()


@pytest.mark.parametrize("fullgraph", [False, True])
def test_capture_on_a_compiled_transformer(pipe, fullgraph) -> None:
    """Without fullgraph, the graph breaks around the observed attention modules; a full-graph wrapper
    calls its module eagerly while the session is open (and compiled again after)."""
    frames, table = captured(pipe)
    pipe.transformer = torch.compile(pipe.transformer, backend="eager", fullgraph=fullgraph)
    forward = pipe.transformer.forward
    compiled_frames, compiled_table = captured(pipe)
    assert np.array_equal(compiled_frames, frames)
    assert_same_tables(compiled_table, table)
    assert np.array_equal(generate(pipe), frames)  # and nothing left behind
    assert "_diffusers_hook" not in pipe.transformer._orig_mod.blocks[1].attn1.__dict__
    assert pipe.transformer.forward is forward


def test_capture_on_regionally_compiled_blocks_with_full_graphs(pipe) -> None:
    """compile_repeated_blocks(fullgraph=True) cannot break a block's graph: the blocks holding an observed
    attention module run eagerly while the session is open; the others stay compiled; all restored after."""
    frames, table = captured(pipe)
    edit = AttentionEdit(mask="tiles", window=(1, 1, 1), layers={2})
    with intervene(pipe, [edit]):
        edited = generate(pipe)
    pipe.transformer.compile_repeated_blocks(fullgraph=True, backend="eager")
    compiled = {i: block._compiled_call_impl for i, block in enumerate(pipe.transformer.blocks)}
    assert all(compiled.values())
    compiled_frames, compiled_table = captured(pipe)
    assert np.array_equal(compiled_frames, frames)
    assert_same_tables(compiled_table, table)
    with capture(pipe, layers=[2]):
        assert [compiled_in_place(block) for block in pipe.transformer.blocks] == [True, True, False, True]
    with intervene(pipe, [edit], fast=True):  # it counts every self-attention call: every block runs eagerly
        assert not any(compiled_in_place(block) for block in pipe.transformer.blocks)
        assert np.abs(generate(pipe) - edited).max() < 1e-4
    with pytest.raises(RuntimeError, match="boom"), capture(pipe, layers=[0]):
        raise RuntimeError("boom")
    assert {i: block._compiled_call_impl for i, block in enumerate(pipe.transformer.blocks)} == compiled


@pytest.mark.slow
def test_capture_on_an_inductor_compiled_transformer(pipe) -> None:
    frames, table = captured(pipe)
    pipe.transformer.compile_repeated_blocks(fullgraph=True)
    compiled_frames, compiled_table = captured(pipe)
    assert np.abs(compiled_frames - frames).max() < 1e-4
    assert_same_tables(compiled_table, table, atol=1e-4)
