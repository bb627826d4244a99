"""Model folders are untrusted input (issue 13): no pickles, no shipped code, no foreign modules,
and a config that disagrees with its weights is refused before anything is built."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import vditscope
from vditscope.adapters.loading import load_pipeline
from vditscope.adapters.text_models import load_text_model
from vditscope.errors import VditscopeError
from vditscope.tiny import SHIPPED_MODELS, TEXT_MODELS


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vditscope.cli", *args], capture_output=True, text=True, input="", timeout=300
    )


def _copy(name: str, tmp_path: Path) -> Path:
    target = tmp_path / name
    shutil.copytree(vditscope.tiny_model_dir(name), target)
    return target


def _to_pickle(safetensors: Path, name: str) -> None:
    """Replace a safetensors file by a torch.save pickle of the same tensors."""
    torch.save(load_file(str(safetensors)), safetensors.parent / name)
    safetensors.unlink()


def _edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _one_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# -- pickled weights -------------------------------------------------------------------------------
def test_pipeline_with_pickled_transformer_weights_is_refused(tmp_path):
    model = _copy("tiny-wan", tmp_path)
    _to_pickle(model / "transformer" / "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
    with pytest.raises(VditscopeError, match="safetensors only") as info:
        load_pipeline(model)
    assert str(model / "transformer") in str(info.value)
    out = tmp_path / "x"
    line = _one_line(_cli("analyze", "--model", str(model), "--out", str(out)))
    assert "safetensors only" in line and "transformer" in line
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "staging directory left behind"


def test_text_model_with_only_pytorch_model_bin_is_refused(tmp_path):
    model = _copy("tiny-lm", tmp_path)
    _to_pickle(model / "model.safetensors", "pytorch_model.bin")
    with pytest.raises(VditscopeError, match="safetensors only"):
        load_text_model(model)
    out = tmp_path / "x"
    line = _one_line(_cli("sinks", "--model", str(model), "--text", "a red square", "--out", str(out)))
    assert "pytorch_model.bin" in line and "safetensors only" in line
    assert not out.exists()


# -- code shipped with a model ---------------------------------------------------------------------
def _evil_module(path: Path, marker: Path) -> None:
    path.write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n")


def test_text_model_with_auto_map_is_refused_before_transformers_runs_it(tmp_path):
    model = _copy("tiny-lm", tmp_path)
    marker = tmp_path / "marker"
    _evil_module(model / "configuration_evil.py", marker)
    _edit_json(model / "config.json", auto_map={"AutoConfig": "configuration_evil.EvilConfig"})
    with pytest.raises(VditscopeError, match="auto_map"):
        load_text_model(model)
    out = tmp_path / "x"
    result = _cli("sinks", "--model", str(model), "--text", "a red square", "--out", str(out))
    line = _one_line(result)
    assert "auto_map" in line and "config.json" in line
    assert "custom code" in line and "[y/N]" not in result.stdout + result.stderr
    assert not marker.exists() and not out.exists()


def test_text_model_with_python_files_is_refused(tmp_path):
    model = _copy("tiny-lm", tmp_path)
    marker = tmp_path / "marker"
    _evil_module(model / "modeling_evil.py", marker)
    with pytest.raises(VditscopeError, match=r"modeling_evil\.py"):
        load_text_model(model)
    assert not marker.exists()


@pytest.mark.parametrize(
    "entry",
    [["os", "system"], ["evil_side_effects", "PixelShuffleVAE"], ["vditscope.models.missing", "PixelShuffleVAE"]],
)
def test_model_index_naming_a_foreign_library_is_refused(tmp_path, monkeypatch, entry):
    model = _copy("tiny-wan", tmp_path)
    marker = tmp_path / "marker"
    modules = tmp_path / "modules"
    modules.mkdir()
    _evil_module(modules / "evil_side_effects.py", marker)
    monkeypatch.syspath_prepend(str(modules))
    _edit_json(model / "model_index.json", vae=entry)
    with pytest.raises(VditscopeError, match=r"loads components from diffusers, transformers and vditscope\.models"):
        load_pipeline(model)
    assert not marker.exists() and "evil_side_effects" not in sys.modules


def test_custom_pipeline_and_component_code_are_refused(tmp_path):
    marker = tmp_path / "marker"
    # a pipeline class given as [module, class] with the module shipped at the top of the directory
    model = _copy("tiny-wan", tmp_path)
    _evil_module(model / "pipeline.py", marker)
    _edit_json(model / "model_index.json", _class_name=["pipeline", "WanPipeline"])
    with pytest.raises(VditscopeError, match="pipeline class"):
        load_pipeline(model)
    (model / "model_index.json").write_text((vditscope.tiny_model_dir("tiny-wan") / "model_index.json").read_text())
    with pytest.raises(VditscopeError, match=r"pipeline\.py"):
        load_pipeline(model)
    # diffusers imports <component>/<library>.py as a custom component
    (model / "pipeline.py").unlink()
    _evil_module(model / "transformer" / "diffusers.py", marker)
    with pytest.raises(VditscopeError, match="Python code"):
        load_pipeline(model)
    (model / "transformer" / "diffusers.py").unlink()
    _edit_json(model / "text_encoder" / "config.json", auto_map={"AutoModel": "modeling_evil.Evil"})
    with pytest.raises(VditscopeError, match="auto_map"):
        load_pipeline(model)
    assert not marker.exists()


# -- config against weights ------------------------------------------------------------------------
def test_layer_count_far_beyond_the_weights_is_refused_quickly(tmp_path):
    model = _copy("tiny-wan", tmp_path)
    _edit_json(model / "transformer" / "config.json", num_layers=10000)
    start = time.perf_counter()
    with pytest.raises(VditscopeError) as info:
        load_pipeline(model)
    assert time.perf_counter() - start < 5
    message = str(info.value)
    assert "transformer/config.json says num_layers=10000" in message and "missing blocks.4" in message
    out = tmp_path / "x"
    line = _one_line(_cli("analyze", "--model", str(model), "--out", str(out)))
    assert "num_layers=10000" in line and not out.exists()


def test_small_layer_mismatch_and_shape_mismatch_are_refused(tmp_path):
    model = _copy("tiny-wan", tmp_path)
    _edit_json(model / "transformer" / "config.json", num_layers=6)
    with pytest.raises(
        VditscopeError, match=r"implies 6 blocks \(num_layers=6\) but the weights hold 4 \(missing blocks\.4"
    ):
        load_pipeline(model)
    _edit_json(model / "transformer" / "config.json", num_layers=4, ffn_dim=100)
    with pytest.raises(VditscopeError, match="with shape"):
        load_pipeline(model)
    # the text encoder is checked too
    _edit_json(model / "transformer" / "config.json", ffn_dim=384)
    load_pipeline(model)
    _edit_json(model / "text_encoder" / "config.json", num_layers=5000)
    with pytest.raises(VditscopeError, match=r"text_encoder/config\.json says num_layers=5000"):
        load_pipeline(model)


def test_text_model_layer_mismatch_is_refused(tmp_path):
    model = _copy("tiny-lm", tmp_path)
    _edit_json(model / "config.json", num_hidden_layers=10000)
    start = time.perf_counter()
    with pytest.raises(VditscopeError, match="says num_hidden_layers=10000"):
        load_text_model(model)
    assert time.perf_counter() - start < 5
    _edit_json(model / "config.json", num_hidden_layers=5)
    with pytest.raises(VditscopeError, match=r"implies 5 model\.layers"):
        load_text_model(model)


# -- the shipped models ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", SHIPPED_MODELS)
def test_shipped_pipelines_still_load(name):
    pipe, _, directory = load_pipeline(name)
    assert directory == vditscope.tiny_model_dir(name)
    assert type(pipe.vae).__name__ == "PixelShuffleVAE"
    assert all(not p.is_meta for p in pipe.transformer.parameters())


@pytest.mark.parametrize("name", TEXT_MODELS)
def test_shipped_text_models_still_load(name):
    text_model = load_text_model(vditscope.tiny_model_dir(name))
    assert text_model.num_layers > 0 and text_model.causal
