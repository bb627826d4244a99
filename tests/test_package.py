"""The package's public names: all there, loaded on first use, so that the command line starts light."""

from __future__ import annotations

import subprocess
import sys

import vditscope


def test_every_public_name_resolves() -> None:
    for name in vditscope.__all__:
        assert getattr(vditscope, name) is not None, name
    assert vditscope.load_run is vditscope.open_run  # issue 18's name for the run reader


def test_capture_stays_the_function_after_its_package_is_imported() -> None:
    import vditscope.capture.session

    assert callable(vditscope.capture) and vditscope.capture.__name__ == "capture"
    from vditscope import capture

    assert capture is vditscope.capture


def test_the_command_line_module_imports_neither_torch_nor_diffusers() -> None:
    code = "import sys, vditscope.cli; print(sorted({'torch', 'diffusers'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_shipped_pipeline_loads_with_diffusers_in_a_fresh_interpreter() -> None:
    """Its VAE's module (vditscope.models.pixel_vae) is imported by tiny_model_dir, as diffusers needs."""
    code = (
        "import vditscope; from diffusers import DiffusionPipeline; "
        "pipe = DiffusionPipeline.from_pretrained(vditscope.tiny_model_dir(), use_safetensors=True); "
        "print(type(pipe.vae).__name__)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "PixelShuffleVAE"
