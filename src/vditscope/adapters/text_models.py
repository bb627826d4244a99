"""Hugging Face transformers text models (the language-model side of the sink comparison): vetted and loaded
from a local directory, offline, with SDPA attention so that every layer's attention reaches torch SDPA."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import VditscopeError
from .loading import DTYPES, quiet_loading
from .model_files import check_weights_match_config, vet_text_model_dir

# safetensors only: a pickled checkpoint (pytorch_model.bin) can run code while it loads
WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json")


@dataclass
class TextModel:
    """A loaded text model with its tokenizer."""

    model: Any
    tokenizer: Any
    directory: Path
    causal: bool

    @property
    def num_layers(self) -> int:
        config = self.model.config
        return int(getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", 0))

    def special_tokens(self) -> set[str]:
        return set(getattr(self.tokenizer, "all_special_tokens", []) or [])


def is_text_model_dir(path: Path) -> bool:
    """A transformers model directory (config.json, no diffusers model_index.json)."""
    return (path / "config.json").is_file() and not (path / "model_index.json").is_file()


def load_text_model(directory: Path, device: str = "cpu", dtype: str = "float32") -> TextModel:
    """Load a causal LM or encoder from a local directory, offline, with SDPA attention."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    # the directory is untrusted input: no code shipped with it (auto_map, *.py), safetensors only,
    # all checked before transformers reads anything
    vet_text_model_dir(directory)
    if not any(next(directory.glob(pattern), None) for pattern in WEIGHT_PATTERNS):
        raise VditscopeError(f"{directory} has a config.json but no model weights (*.safetensors)")
    try:
        config = AutoConfig.from_pretrained(directory, local_files_only=True, trust_remote_code=False)
    except Exception as exc:
        raise VditscopeError(f"could not read the model config in {directory}: {str(exc).splitlines()[0]}") from exc
    architectures = list(getattr(config, "architectures", None) or [])
    causal = any(name.endswith(("ForCausalLM", "LMHeadModel")) for name in architectures)
    loader = AutoModelForCausalLM if causal else AutoModel
    try:
        with quiet_loading():
            check_weights_match_config(directory, lambda: loader.from_config(config, trust_remote_code=False))
            model = loader.from_pretrained(
                directory,
                attn_implementation="sdpa",
                local_files_only=True,
                dtype=DTYPES.get(dtype, torch.float32),
                trust_remote_code=False,
                use_safetensors=True,
            )
            tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True, trust_remote_code=False)
    except VditscopeError:
        raise
    except Exception as exc:
        raise VditscopeError(f"could not load the text model in {directory}: {str(exc).splitlines()[0]}") from exc
    model.to(device).eval()
    return TextModel(model, tokenizer, directory, causal)
