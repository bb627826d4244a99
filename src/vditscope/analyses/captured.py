"""One generation of ``vditscope analyze`` as a job a worker runs (capture on, plan edits applied),
and the hidden cache of finished generations that lets an interrupted analysis resume."""

from __future__ import annotations

import hashlib
import json
import shutil
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..capture import capture
from ..capture.intervene import AttentionEdit, intervene
from ..executors import Workbench
from ..store import sibling, write_atomic
from ..store.map_names import MapName


@dataclass
class Captured:
    """What one captured generation contributes to a run directory."""

    table: pd.DataFrame  # the capture table, with prompt, seed and generation columns
    maps: dict[str, torch.Tensor]  # pooled maps (cond branch), named by MapName
    video: np.ndarray  # frames x height x width x 3, float32 in [0, 1]
    notes: list[str]
    grid: tuple[int, int, int] | None  # video token grid of the self-attention calls
    text_tokens: int | None
    labels: list[str]  # the prompt's text tokens as the attention maps index them
    backends: list[str] = field(default_factory=list)  # the statistics paths that ran ("torch", "triton")


@dataclass(frozen=True)
class CaptureJob:
    """Generate one prompt with one seed under capture (and the plan's edits, if any)."""

    index: int  # position in the run's generation list (the table's ``generation`` column)
    prompt_index: int
    prompt: str
    seed: int
    generation: dict[str, Any]
    layers: tuple[int, ...] | None
    capture_steps: tuple[int, ...] | None
    top_mass: str
    map_tiles: int
    map_steps: tuple[int, ...]
    edits: tuple[AttentionEdit, ...] = ()
    chunk_size: int | None = None  # the statistics' query rows per chunk (None: their default)

    def key(self, model: str, dtype: str) -> str:
        """A stable file name: hash of everything that determines the result."""
        blob = json.dumps(
            {
                "index": self.index,
                "prompt_index": self.prompt_index,
                "prompt": self.prompt,
                "seed": self.seed,
                "generation": self.generation,
                "layers": self.layers,
                "capture_steps": self.capture_steps,
                "top_mass": self.top_mass,
                "map_tiles": self.map_tiles,
                "map_steps": self.map_steps,
                "edits": [edit.to_dict() for edit in self.edits],
                "model": model,
                "dtype": dtype,
            },
            sort_keys=True,
        )
        return hashlib.sha1(blob.encode()).hexdigest()[:20]

    def __call__(self, bench: Workbench) -> Captured:
        pipe = bench.pipe
        with ExitStack() as stack:
            if self.edits:
                stack.enter_context(intervene(pipe, list(self.edits), fast=True))
            generator = torch.Generator(device=bench.device).manual_seed(self.seed)
            with capture(
                pipe,
                layers=self.layers,
                steps=self.capture_steps,
                top_mass=self.top_mass,  # type: ignore[arg-type]
                map_tiles=self.map_tiles,
                map_steps=self.map_steps,
                chunk_size=self.chunk_size,
            ) as cap:
                result = pipe(prompt=self.prompt, generator=generator, output_type="np", **self.generation)
        table = cap.table()
        table.insert(0, "prompt", self.prompt_index)
        table.insert(1, "seed", self.seed)
        table["generation"] = self.index
        maps = pooled_maps(cap.records, self.prompt_index, self.seed)
        grid = text_tokens = None
        for record in cap.records:
            if record.kind == "self" and record.layout is not None:
                grid, text_tokens = tuple(record.layout.grid), record.layout.num_text
                break
        return Captured(
            table=table,
            maps=maps,
            video=np.asarray(result.frames[0], dtype=np.float32),
            notes=list(cap.notes),
            grid=grid,  # type: ignore[arg-type]
            text_tokens=text_tokens,
            labels=token_labels(pipe, self.prompt, text_length(maps)),
            backends=sorted(cap.backends),
        )


def writable(array: np.ndarray) -> np.ndarray:
    """The array itself, or a copy when it is read-only (as arrays that come back from Ray workers are)."""
    return np.require(array, requirements=["C", "W"])


def pooled_maps(records: list, prompt: int, seed: int) -> dict[str, torch.Tensor]:
    """Per-layer maps of the cond branch: name -> (heads, ...). Token maps are kept per step (float16);
    the other maps are averaged over the captured steps (text tile maps, taken at the map steps, as float16)."""
    sums: dict[str, list[torch.Tensor]] = {}
    per_step: dict[str, torch.Tensor] = {}
    for record in records:
        if record.branch != "cond" or record.sample != 0:
            continue
        for key, tensor in record.maps.items():
            if key == "token_map":
                name = MapName(key, prompt, seed, record.kind, record.layer, record.step)
                per_step[str(name)] = tensor.to(torch.float16)
            else:
                name = MapName(key, prompt, seed, record.kind, record.layer)
                sums.setdefault(str(name), []).append(tensor.to(torch.float32))
    pooled = {name: torch.stack(items).mean(0) for name, items in sums.items()}
    pooled = {name: t.to(torch.float16) if name.startswith("text_tile_map.") else t for name, t in pooled.items()}
    return pooled | per_step


def text_length(maps: dict[str, torch.Tensor]) -> int:
    """Number of text keys the captured text attention covers (0 when none)."""
    return max((int(t.shape[-1]) for n, t in maps.items() if n.startswith("text_received.")), default=0)


def token_labels(pipe: Any, prompt: str, length: int) -> list[str]:
    """The text tokens of a prompt as the pipeline's tokenizer pads them to ``length`` (best effort:
    pipelines that add a template before the prompt get labels that may be shifted; [] on failure)."""
    tokenizer = getattr(pipe, "tokenizer", None)
    if tokenizer is None or length < 1:
        return []
    try:
        ids = tokenizer(prompt, max_length=length, padding="max_length", truncation=True)["input_ids"]
        return [str(t) for t in tokenizer.convert_ids_to_tokens(list(ids))][:length]
    except Exception:  # labels are decoration: a tokenizer failure must not stop the run
        return []


class CaptureCache:
    """Finished generations of a run in progress, kept beside it (``.OUT.generations/``) until the run
    directory is in place: per generation a table (parquet) and then its tensors (safetensors, the
    marker that the generation is complete). Every file is written atomically."""

    def __init__(self, out: Path) -> None:
        self.root = sibling(Path(out).resolve(), "generations")

    def has(self, key: str) -> bool:
        return (self.root / f"{key}.safetensors").is_file() and (self.root / f"{key}.parquet").is_file()

    def save(self, key: str, result: Captured) -> None:
        from safetensors.torch import save_file

        tensors = {f"map:{name}": t.contiguous() for name, t in result.maps.items()}
        tensors["video"] = torch.from_numpy(writable(result.video))
        meta = {
            "notes": result.notes,
            "grid": result.grid,
            "text_tokens": result.text_tokens,
            "labels": result.labels,
            "backends": result.backends,
            "order": list(result.maps),  # safetensors sorts names; the report reads maps in capture order
        }
        metadata = {"vditscope": json.dumps(meta)}
        write_atomic(self.root / f"{key}.parquet", lambda p: result.table.to_parquet(p, index=False))
        write_atomic(self.root / f"{key}.safetensors", lambda p: save_file(tensors, str(p), metadata=metadata))

    def load(self, key: str) -> Captured:
        from safetensors import safe_open

        path = self.root / f"{key}.safetensors"
        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads((handle.metadata() or {})["vditscope"])
            maps = {name: handle.get_tensor(f"map:{name}") for name in meta["order"]}
            video = handle.get_tensor("video").numpy()
        return Captured(
            table=pd.read_parquet(self.root / f"{key}.parquet"),
            maps=maps,
            video=video,
            notes=list(meta["notes"]),
            grid=tuple(meta["grid"]) if meta["grid"] is not None else None,  # type: ignore[arg-type]
            text_tokens=meta["text_tokens"],
            labels=list(meta["labels"]),
            backends=list(meta.get("backends", [])),
        )

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
