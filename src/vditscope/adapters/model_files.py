"""Vet a model directory's files before anything is loaded from it: model folders are untrusted input.

What a model directory can make a loader do, and what vditscope refuses (one clear line each):

- Pickled checkpoints (``diffusion_pytorch_model.bin``, ``pytorch_model.bin``, ``.pt``, ``.ckpt``)
  can run code while they are unpickled: weights are read from ``*.safetensors`` only.
- ``model_index.json`` names the Python module each component is imported from: only diffusers,
  transformers and vditscope's own ``vditscope.models.*`` modules (the shipped tiny VAE) pass.
- Python files shipped with a model are imported by diffusers (a custom pipeline, a component's
  ``<library>.py``) or transformers (``auto_map``): a directory with ``*.py`` files at its top or in
  a component folder, an ``auto_map`` or ``custom_pipeline`` entry, or a pipeline class given as a
  ``[module, class]`` pair is refused.
- A config that disagrees with its weights fails only after the whole model is built (a transformer
  config saying 10000 layers next to weights for 2 fails after minutes and gigabytes with "Cannot
  copy out of meta tensor"): ``check_weights_match_config`` compares the names and shapes in the
  safetensors headers (no tensor data is read) with those the config implies, built on the meta
  device (no memory). A layer count far beyond anything the weights hold is refused first from the
  config's numbers alone, since building thousands of blocks even on the meta device takes seconds.

``vet_pipeline_dir`` and ``vet_text_model_dir`` only read the file system and JSON; they import nothing
the directory names.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from ..errors import VditscopeError

ALLOWED_LIBRARIES = ("diffusers", "transformers")
# vditscope's own model classes a pipeline may name (the shipped tiny VAE: vditscope.models.pixel_vae)
OWN_MODELS_PACKAGE = "vditscope.models"
OWN_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
# weight formats vditscope does not read: pickles (can run code) and other frameworks' files
OTHER_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".h5", ".msgpack", ".gguf")
# config keys that would name code to run
CODE_KEYS = ("auto_map", "custom_pipeline")
# file names diffusers and transformers give their weights (no variant)
WEIGHT_NAMES = ("diffusion_pytorch_model", "model")
# a layer count above this that no list in the weights reaches is refused from the config alone
# (building that many blocks on the meta device would already take seconds: 1000 Wan blocks ~2 s)
LAYER_PROXY_LIMIT = 256
LAYER_KEY = re.compile(r"(num|n)_(\w+_)?layers?")
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# -- files and JSON only -------------------------------------------------------------------------
def read_json(path: Path) -> Any:
    """A JSON file's content, with one clear line when it is not valid JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VditscopeError(f"{path} is not valid JSON ({exc})") from exc


def check_no_code(folder: Path) -> None:
    """Refuse Python files directly in ``folder`` (diffusers and transformers import them from there)."""
    code = sorted(p.name for p in folder.glob("*.py"))
    if code:
        raise VditscopeError(
            f"{folder} holds Python code ({', '.join(code)}); vditscope never runs code shipped with a model"
        )


def check_configs(folder: Path) -> None:
    """Refuse JSON configs in ``folder`` that name code to run (``auto_map``, ``custom_pipeline``)."""
    for path in sorted(folder.glob("*config*.json")):  # config.json, tokenizer_config.json... (not tokenizer.json)
        data = read_json(path)
        keys = [key for key in CODE_KEYS if isinstance(data, dict) and key in data]
        if keys:
            raise VditscopeError(
                f"{path} has {keys[0]}, which names custom code to run; vditscope never runs code shipped with a model"
            )


def check_weight_format(folder: Path) -> list[Path]:
    """The folder's ``*.safetensors`` files; refuse a folder whose weights exist only in other formats."""
    safetensors = sorted(folder.glob("*.safetensors"))
    if safetensors:
        return safetensors
    others = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in OTHER_WEIGHT_SUFFIXES)
    if others:
        raise VditscopeError(
            f"{folder} holds its weights as {', '.join(others)}; vditscope reads safetensors only "
            "(a pickled checkpoint can run code while it loads): convert them to .safetensors"
        )
    return []


def own_model_module(library: str) -> bool:
    """``vditscope.models.<module>`` naming a module that ships with vditscope."""
    prefix = OWN_MODELS_PACKAGE + "."
    if not library.startswith(prefix):
        return False
    module = library[len(prefix) :]
    return bool(IDENTIFIER.fullmatch(module)) and (OWN_MODELS_DIR / f"{module}.py").is_file()


def pipeline_components(index: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Component name -> (library, class) of a model_index.json; optional empty ones ([null, null]) left out."""
    components = {}
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, (list, tuple)) or len(entry) != 2:
            continue
        library, class_name = entry
        if (library is None and class_name is None) or not all(isinstance(x, (str, type(None))) for x in entry):
            continue  # an empty optional component, or a setting that happens to be a pair
        components[name] = (library, class_name)
    return components


def vet_pipeline_dir(model_dir: Path, index: dict[str, Any]) -> None:
    """Refuse a pipeline directory that would run code or unpickle weights (files and JSON only)."""
    where = model_dir / "model_index.json"
    class_name = index.get("_class_name")
    if not isinstance(class_name, str) or not IDENTIFIER.fullmatch(class_name):
        raise VditscopeError(
            f"{where} names the pipeline class {class_name!r}; vditscope loads diffusers pipeline classes only"
        )
    keys = [key for key in CODE_KEYS if key in index]
    if keys:
        raise VditscopeError(f"{where} has {keys[0]}; vditscope never runs code shipped with a model")
    check_no_code(model_dir)
    for name, (library, component_class) in pipeline_components(index).items():
        if not IDENTIFIER.fullmatch(name):
            raise VditscopeError(f"{where} has a component named {name!r}")
        if not isinstance(library, str) or not (library in ALLOWED_LIBRARIES or own_model_module(library)):
            raise VditscopeError(
                f"{where} imports its {name} from {library!r}; vditscope loads components from "
                f"{', '.join(ALLOWED_LIBRARIES)} and {OWN_MODELS_PACKAGE} only"
            )
        if not isinstance(component_class, str) or not IDENTIFIER.fullmatch(component_class):
            raise VditscopeError(f"{where} names the class of its {name} {component_class!r}")
        folder = model_dir / name
        if folder.is_dir():
            check_configs(folder)
            check_no_code(folder)
            check_weight_format(folder)


def vet_text_model_dir(directory: Path) -> None:
    """Refuse a transformers model directory that would run code or unpickle weights; needs safetensors."""
    check_configs(directory)
    check_no_code(directory)
    if not check_weight_format(directory):
        raise VditscopeError(f"{directory} has a config.json but no model weights (*.safetensors)")


# -- safetensors headers -------------------------------------------------------------------------
def read_safetensors_header(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of one safetensors file, from its header alone (no tensor data is read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error type for a corrupt header
        raise VditscopeError(f"{path} is not a valid safetensors file ({str(exc).splitlines()[0]})") from None


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files a loader reads in ``folder`` (one file, or the shards of an index); [] if none."""
    for stem in WEIGHT_NAMES:
        index = folder / f"{stem}.safetensors.index.json"
        if index.is_file():
            data = read_json(index)
            weight_map = data.get("weight_map") if isinstance(data, dict) else None
            if not isinstance(weight_map, dict) or not weight_map:
                raise VditscopeError(f"{index} has no weight_map")
            shards = sorted({str(name) for name in weight_map.values()})
            for shard in shards:
                if Path(shard).name != shard or not shard.endswith(".safetensors"):
                    raise VditscopeError(f"{index} names a shard outside its folder or not safetensors: {shard}")
                if not (folder / shard).is_file():
                    raise VditscopeError(f"{index} names the shard {shard}, which is missing")
            return [folder / shard for shard in shards]
        single = folder / f"{stem}.safetensors"
        if single.is_file():
            return [single]
    return []


def read_weight_shapes(files: Iterable[Path]) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for path in files:
        shapes.update(read_safetensors_header(path))
    return shapes


# -- config against weights ----------------------------------------------------------------------
def _lists(names: Iterable[str]) -> dict[str, set[int]]:
    """Module lists in parameter names: the part before the first numeric segment -> indices seen."""
    lists: dict[str, set[int]] = {}
    for name in names:
        parts = name.split(".")
        for i, part in enumerate(parts):
            if part.isdigit() and i > 0:
                lists.setdefault(".".join(parts[:i]), set()).add(int(part))
                break
    return lists


def _list_index(list_name: str, name: str) -> int | None:
    """The entry index of parameter ``name`` in module list ``list_name`` ("blocks", "blocks.3.x" -> 3)."""
    if not name.startswith(list_name + "."):
        return None
    part = name[len(list_name) + 1 :].split(".")[0]
    return int(part) if part.isdigit() else None


def _layer_counts(config: Any, prefix: str = "") -> Iterable[tuple[str, int]]:
    """(key, value) of the config's layer-count entries (num_layers, num_hidden_layers, n_layer...), nested too."""
    if not isinstance(config, dict):
        return
    for key, value in config.items():
        if isinstance(value, dict):
            yield from _layer_counts(value, f"{prefix}{key}.")
        elif isinstance(value, int) and not isinstance(value, bool) and LAYER_KEY.fullmatch(str(key)):
            yield f"{prefix}{key}", value


def _describe(lists: dict[str, set[int]], name: str) -> str:
    count = len(lists[name])
    return f"{count} {name}" if count != 1 else f"1 {name} entry"


def check_layer_proxy(config_path: Path, config: Any, weights: dict[str, tuple[int, ...]]) -> None:
    """Refuse, from the config's numbers alone, a layer count far beyond any module list in the weights."""
    lists = _lists(weights)
    longest = max(lists, key=lambda name: len(lists[name]), default=None)
    most = len(lists[longest]) if longest else 0
    for key, value in _layer_counts(config):
        if value > LAYER_PROXY_LIMIT and value > most:
            held = f"{_describe(lists, longest)}; missing {longest}.{most} onwards" if longest else "no layer list"
            raise VditscopeError(
                f"{config_path} says {key}={value} but the weights hold at most {most} layers ({held}); "
                "the config and the weights do not belong together"
            )


def _align(weights: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]], prefix: str) -> dict:
    """The weights' names with a base-model prefix added or removed where that matches the model better."""
    if not prefix:
        return weights
    candidates = [weights]
    dotted = prefix + "."
    candidates.append({(n[len(dotted) :] if n.startswith(dotted) else n): s for n, s in weights.items()})
    candidates.append({(n if n.startswith(dotted) else dotted + n): s for n, s in weights.items()})
    return max(candidates, key=lambda names: len(expected.keys() & names.keys()))


def _config_key_for(config: Any, count: int) -> str:
    keys = [key for key, value in _layer_counts(config) if value == count]
    return f" ({keys[0]}={count})" if keys else ""


def _expected_state(build: Callable[[], torch.nn.Module]) -> tuple[dict[str, tuple[int, ...]], torch.nn.Module] | None:
    """Names and shapes of the module ``build`` makes, built on the meta device; None when it cannot be."""
    try:
        with torch.device("meta"):
            module = build()
    except Exception:
        # some classes compute on their buffers while they are built; the loader itself will tell
        return None
    return {name: tuple(tensor.shape) for name, tensor in module.state_dict().items()}, module


def _ignored_missing(module: torch.nn.Module) -> list[str]:
    """Names (regular expressions) a transformers model fills itself: tied weights, keys to ignore."""
    patterns: list[str] = []
    for attribute in ("all_tied_weights_keys", "_tied_weights_keys"):
        tied = getattr(module, attribute, None)
        if isinstance(tied, dict):
            patterns += [re.escape(str(name)) for name in tied]
        elif isinstance(tied, (list, tuple, set)):
            patterns += [str(name) for name in tied]
    patterns += [str(p) for p in getattr(module, "_keys_to_ignore_on_load_missing", None) or []]
    return patterns


def check_weights_match_config(
    folder: Path,
    build: Callable[[], torch.nn.Module],
    *,
    config: Any | None = None,
    strict_missing: bool = False,
) -> None:
    """Refuse weights that do not fit the model ``build`` makes from ``folder/config.json``.

    Refused: a module list the weights hold fewer entries of than the config implies (a layer count
    that does not match), and a tensor whose shape differs from the config's. With ``strict_missing``
    (diffusers components, which cannot run with a parameter left unloaded) also any parameter the
    weights lack, when they have no extra names that a renaming on load could explain.
    """
    config_path = folder / "config.json"
    files = weight_files(folder)
    if not files or not config_path.is_file():
        return  # nothing to compare (no weights, or only variants): the loader reports what is wrong
    weights = read_weight_shapes(files)
    if config is None:
        config = read_json(config_path)
    check_layer_proxy(config_path, config, weights)
    built = _expected_state(build)
    if built is None:
        return
    expected, module = built
    weights = _align(weights, expected, str(getattr(module, "base_model_prefix", "") or ""))
    ignored = _ignored_missing(module)
    missing = sorted(name for name in expected.keys() - weights.keys() if not any(re.search(p, name) for p in ignored))
    if missing:
        expected_lists, weight_lists = _lists(expected), _lists(weights)
        for name in sorted(expected_lists, key=lambda n: -len(expected_lists[n])):
            held = weight_lists.get(name)
            if held and len(expected_lists[name]) > len(held):
                lacking = sorted((i, m) for m in missing if (i := _list_index(name, m)) is not None)
                if not lacking:
                    continue
                first = next((m for i, m in lacking if i not in held), lacking[0][1])
                more = f" and {len(lacking) - 1} more" if len(lacking) > 1 else ""
                count = len(expected_lists[name])
                raise VditscopeError(
                    f"{config_path} implies {count} {name}{_config_key_for(config, count)} but the weights hold "
                    f"{len(held)} (missing {first}{more}); the config and the weights do not belong together"
                )
        if strict_missing and not (weights.keys() - expected.keys()):
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise VditscopeError(
                f"the weights in {folder} lack {missing[0]}{more}, which {config_path.name} implies; "
                "the config and the weights do not belong together"
            )
    quantized = isinstance(config, dict) and "quantization_config" in config
    if not quantized:
        for name in sorted(expected.keys() & weights.keys()):
            if expected[name] != weights[name]:
                raise VditscopeError(
                    f"the weights in {folder} hold {name} with shape {list(weights[name])} but {config_path.name} "
                    f"implies {list(expected[name])}; the config and the weights do not belong together"
                )


def _component_class(library: str, class_name: str) -> type | None:
    """The class a vetted model_index.json entry names (None when the library lacks it)."""
    import importlib

    if library not in ALLOWED_LIBRARIES and not own_model_module(library):
        raise VditscopeError(
            f"vditscope loads components from {', '.join(ALLOWED_LIBRARIES)} and {OWN_MODELS_PACKAGE} only"
        )
    module = importlib.import_module(library)
    cls = getattr(module, class_name, None)
    return cls if isinstance(cls, type) else None


def check_pipeline_weights(model_dir: Path, index: dict[str, Any]) -> None:
    """``check_weights_match_config`` for every model component of a vetted pipeline directory."""
    for name, (library, class_name) in pipeline_components(index).items():
        folder = model_dir / name
        if not folder.is_dir():
            continue
        cls = _component_class(library, class_name)
        if cls is None or not issubclass(cls, torch.nn.Module):
            continue  # tokenizers, schedulers; or a class diffusers will report as missing
        config_class = getattr(cls, "config_class", None)
        if library == "transformers" and config_class is not None:
            try:
                config = config_class.from_pretrained(str(folder), local_files_only=True)
            except Exception as exc:
                raise VditscopeError(
                    f"could not read {folder / 'config.json'}: {str(exc).splitlines()[0] if str(exc) else exc}"
                ) from exc
            check_weights_match_config(folder, lambda cls=cls, config=config: cls(config))
        elif hasattr(cls, "from_config"):
            config = read_json(folder / "config.json") if (folder / "config.json").is_file() else None
            if not isinstance(config, dict):
                continue
            check_weights_match_config(
                folder, lambda cls=cls, config=config: cls.from_config(config), config=config, strict_missing=True
            )
