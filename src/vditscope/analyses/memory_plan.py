"""Memory planning: before a run loads any weight, estimate what it will hold, pick the statistics' chunk size
from the memory that is free, and refuse (one line) a run that cannot fit.

The estimate, per part (bytes; ``e`` = bytes per element of the load dtype):

- weights: each component's parameter count (safetensors headers, or a published model's configs) x ``e``;
- activations of one transformer call: samples x self-attention tokens x max(13 hidden, 3 hidden + 2 ffn)
  x ``e``, a rough bound: the tiny Wan and CogVideoX models measured 10.5 and 12 hidden per token (float32,
  torch profiler), the feed-forward phase holds the residual, its input and two ffn-wide tensors;
- statistics: the peak of one self-attention call's statistics at the chosen chunk (``stats/working_set.py``,
  held within 1.4x above measured peaks by the tests);
- maps: the token maps the run keeps, float16 per generation, layer, map step and head (T' x T' tiles,
  cond branch), plus the current generation's float32 records of every branch, with the frame maps,
  locality profiles and text masses kept per captured step;
- videos: frames x height x width x 3 float32 per generation.

On CUDA the weights, activations and statistics are device memory (checked against ``torch.cuda.mem_get_info``)
and the host holds the larger of the weights (they load there first) and the maps and videos; with
``--offload`` the device holds the largest component (model) or one transformer block's share (sequential,
group) and the host all the weights besides the maps and videos. On CPU it is all host memory, checked
against the available RAM (psutil, else /proc/meminfo's MemAvailable). The VAE's decoding and the text
encoders' activations are not counted. VDITSCOPE_SKIP_MEMORY_CHECK=1 runs anyway.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..adapters import ADAPTERS
from ..adapters.base import TRANSFORMER_COMPONENTS
from ..adapters.loading import DTYPES, resolve_device, vetted_index
from ..adapters.model_files import pipeline_components, read_json, read_weight_shapes, weight_files
from ..adapters.token_counts import (
    TokenCounts,
    TransformerSize,
    config_with_defaults,
    pipeline_default,
    token_counts,
    transformer_size,
)
from ..errors import VditscopeError
from ..stats.working_set import CallShape, choose_chunk_size, statistics_bytes

SKIP_ENV = "VDITSCOPE_SKIP_MEMORY_CHECK"
ACTIVATION_HIDDEN = 13  # hidden-sized tensors per token of one block's attention phase (measured 10.5-12)
FLOAT16, FLOAT32 = 2, 4
GIB = 2**30


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs of a model, read without loading a weight."""

    name: str
    family: str
    pipeline: str
    transformer: dict[str, Any]
    vae: dict[str, Any]
    parameters: dict[str, int]  # component -> parameter count
    text_tokens: int | None  # the pipeline's padded text length where the generation does not set it
    largest_other: int = 0  # elements of the largest weight tensor outside the transformer(s) (leaf offloading)

    @classmethod
    def from_directory(cls, model_dir: Path) -> ModelShape:
        """The shape of a pipeline directory, vetted first (it is untrusted): configs and safetensors headers."""
        index = vetted_index(model_dir)
        components = pipeline_components(index)
        family = next(f for f, a in ADAPTERS.items() if components["transformer"][1] in a.model_classes)
        parameters, largest_other = {}, 0
        for name in components:
            files = weight_files(model_dir / name) if (model_dir / name).is_dir() else []
            if files:
                sizes = [math.prod(shape) for shape in read_weight_shapes(files).values()]
                parameters[name] = sum(sizes)
                if name not in TRANSFORMER_COMPONENTS:
                    largest_other = max(largest_other, *sizes)
        vae_config = model_dir / "vae" / "config.json"
        pipeline = str(index["_class_name"])
        return cls(
            name=str(model_dir),
            family=family,
            pipeline=pipeline,
            transformer=read_json(model_dir / "transformer" / "config.json"),
            vae=read_json(vae_config) if vae_config.is_file() else {},
            parameters=parameters,
            text_tokens=pipeline_default(pipeline, "max_sequence_length"),
            largest_other=largest_other,
        )

    @classmethod
    def from_published(cls, model: Any) -> ModelShape:
        """The shape of a published checkpoint (``adapters.published.PublishedModel``), configs completed
        with their classes' defaults."""
        return cls(
            name=model.name,
            family=model.family,
            pipeline=model.pipeline,
            transformer=config_with_defaults(model.transformer_class, model.transformer),
            vae=config_with_defaults(model.vae_class, model.vae),
            parameters=dict(model.parameters),
            text_tokens=model.text_tokens,
            largest_other=model.largest_other_tensor,
        )


@dataclass(frozen=True)
class MemoryRequest:
    """The sizes a run asks for: the generation (height, width, num_frames, num_inference_steps,
    guidance_scale), where and how it runs, what it captures and keeps."""

    generation: dict[str, Any]
    device: str = "cpu"
    dtype: str = "float32"
    layers: Sequence[int] | None = None  # captured layers (None: all)
    capture_steps: Sequence[int] | None = None  # captured steps (None: all)
    map_tiles: int | None = None  # token maps of at most this many tiles (None: no maps kept)
    map_steps: int = 0  # steps whose token maps are kept
    generations: int = 1  # generations whose maps and videos the run keeps
    chunk_size: int | None = None  # the statistics' query rows per chunk (None: chosen here)
    top_mass: str = "auto"
    threads: int = field(default_factory=lambda: torch.get_num_threads())  # torch's CPU threads at planning
    offload: str = "none"  # weights on the CPU between uses: none, model, sequential or group
    context_parallel: int = 1  # Ulysses ranks: each holds every weight, 1/N of the tokens between attention calls
    # and 1/N of the heads in one


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per part of one run, and what they were computed for."""

    model: str
    family: str
    device: str
    dtype: str
    tokens: TokenCounts
    chunk_size: int
    backend: str  # the statistics path the device takes: "torch" (chunked) or "triton"
    weights: dict[str, int]
    activations: int
    statistics: int
    maps: int
    videos: int
    offload: str = "none"
    layers: int = 1  # the transformer's blocks (what sequential or group offloading holds one of)
    largest_leaf: int = 0  # bytes of the largest weight outside the transformer (a leaf-offloaded module)

    @property
    def on_cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def device_weights(self) -> int:
        """Weights on the device at once: all; the largest component with model offloading; one transformer
        block's share, or the largest other weight (text encoders and VAE go leaf by leaf), with sequential or
        group offloading."""
        if not self.on_cuda or self.offload == "none":
            return sum(self.weights.values())
        if self.offload == "model":
            return max(self.weights.values(), default=0)
        return max(-(-self.weights.get("transformer", 0) // max(self.layers, 1)), self.largest_leaf)

    @property
    def device_bytes(self) -> int:
        """What the device running the model holds at its peak (CPU: everything)."""
        compute = self.device_weights + self.activations + self.statistics
        return compute if self.on_cuda else compute + self.maps + self.videos

    @property
    def host_bytes(self) -> int:
        """What the host holds besides (CUDA: the weights while they load, or while offloaded, and the kept
        maps and videos)."""
        if not self.on_cuda:
            return 0
        weights = sum(self.weights.values())
        kept = self.maps + self.videos
        return weights + kept if self.offload != "none" else max(weights, kept)

    def parts(self) -> list[tuple[str, int, str]]:
        """(part, bytes, where) rows: one per weight component, then activations, statistics, maps, videos."""
        device = "cuda" if self.on_cuda else "host"
        held = "host" if self.on_cuda and self.offload != "none" else device
        rows = [(f"weights: {name}", size, held) for name, size in self.weights.items()]
        if held != device:
            rows.append((f"weights on cuda at once (--offload {self.offload})", self.device_weights, device))
        rows += [("activations (one transformer call)", self.activations, device)]
        rows += [(f"statistics (one attention call, chunk {self.chunk_size})", self.statistics, device)]
        return [*rows, ("maps kept", self.maps, "host"), ("videos kept", self.videos, "host")]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["tokens"] = {**asdict(self.tokens), "video": self.tokens.video, "self": self.tokens.self_tokens}
        return data | {"device_bytes": self.device_bytes, "host_bytes": self.host_bytes}


def estimate_memory(shape: ModelShape, request: MemoryRequest) -> MemoryEstimate:
    """The estimate of every part (see the module's docstring for the formulas)."""
    if request.dtype not in DTYPES:
        raise VditscopeError(f"unknown dtype {request.dtype}; choose one of {', '.join(DTYPES)}")
    itemsize = DTYPES[request.dtype].itemsize
    size = transformer_size(shape.family, shape.transformer)
    tokens = token_counts(shape.family, shape.transformer, shape.vae, request.generation, shape.text_tokens)
    call = self_attention_call(tokens, size, request, itemsize)
    ranks = max(request.context_parallel, 1)
    backend = statistics_backend(request.device)
    chunk = request.chunk_size or default_rows(call, request.device)
    statistics = statistics_bytes(
        call, chunk, device=request.device, threads=request.threads, top_mass=request.top_mass, backend=backend
    )
    per_token = max(ACTIVATION_HIDDEN * size.hidden, 3 * size.hidden + 2 * size.ffn)
    frames, height, width = tokens.frames, int(request.generation["height"]), int(request.generation["width"])
    return MemoryEstimate(
        model=shape.name,
        family=shape.family,
        device=request.device,
        dtype=request.dtype,
        tokens=tokens,
        chunk_size=chunk,
        backend=backend,
        weights={name: count * itemsize for name, count in shape.parameters.items()},
        activations=-(-tokens.batch * tokens.self_tokens * per_token * itemsize // ranks),
        statistics=statistics,
        maps=maps_bytes(tokens, size, request),
        videos=request.generations * frames * height * width * 3 * FLOAT32,
        offload=request.offload,
        layers=size.layers,
        largest_leaf=shape.largest_other * itemsize,
    )


def self_attention_call(tokens: TokenCounts, size: TransformerSize, request: MemoryRequest, itemsize: int) -> CallShape:
    """The shape of one self-attention call of the run (with its token map when the run keeps maps)."""
    n = tokens.self_tokens
    tiles = request.map_tiles if request.map_steps else None
    heads = max(size.heads // max(request.context_parallel, 1), 1)  # a Ulysses rank's share
    return CallShape(
        tokens.batch, heads, n, n, size.head_dim, layout=tokens.layout(), map_tiles=tiles,
        masked=tokens.masked, itemsize=itemsize,
    )  # fmt: skip


def default_rows(call: CallShape, device: str) -> int:
    """The chunk the statistics take by default (``stats.default_chunk_size``), at most the queries."""
    from ..stats import default_chunk_size

    return min(default_chunk_size(call.num_k, device.split(":")[0]), call.num_q)


def statistics_backend(device: str) -> str:
    """The path ``attention_stats(backend="auto")`` takes on ``device``: Triton on CUDA where it imports."""
    if not device.startswith("cuda"):
        return "torch"
    from ..stats.triton_stats import triton_available

    return "triton" if triton_available() else "torch"


def maps_bytes(tokens: TokenCounts, size: TransformerSize, request: MemoryRequest) -> int:
    """The maps a run keeps: every generation's float16 token maps (cond branch) and pooled maps, and the
    current generation's float32 records of every branch (token maps at the map steps, the other maps at
    every captured step)."""
    if request.map_tiles is None:
        return 0
    layers = len(set(request.layers)) if request.layers is not None else size.layers
    total_steps = int(request.generation.get("num_inference_steps") or 0)
    steps = len(set(request.capture_steps)) if request.capture_steps is not None else total_steps
    map_steps = min(request.map_steps, steps)
    layout = tokens.layout()
    tiles = layout.tiles(request.map_tiles)[1] if map_steps else 0
    token_map = layers * map_steps * size.heads * tiles**2
    small = layout.frames * (layout.frames + 1) + max(layout.height, layout.width) + tokens.joint_text
    small += tokens.cross_text  # the cross-attention sites' text masses
    other = layers * size.heads * small
    run = request.generations * (token_map * FLOAT16 + other * FLOAT32)
    current = tokens.branches * (token_map + other * steps) * FLOAT32
    return run + current


@dataclass(frozen=True)
class Available:
    """Free memory where the run will hold it: the host's available RAM and, on CUDA, the device's free memory."""

    host: int | None
    device: int | None
    source: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def host_available() -> tuple[int | None, str]:
    """(available RAM bytes, where the figure comes from): psutil, else /proc/meminfo, else (None, why)."""
    try:
        import psutil
    except ImportError:
        pass
    else:
        return int(psutil.virtual_memory().available), "psutil available"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "/proc/meminfo MemAvailable"
    except OSError:
        pass
    return None, "unknown (no psutil, no /proc/meminfo)"


def available_memory(device: str) -> Available:
    """What is free now for a run on ``device`` (the device's share None on CPU, or when CUDA is not here)."""
    host, source = host_available()
    if not device.startswith("cuda"):
        return Available(host, None, source)
    if not torch.cuda.is_available():
        return Available(host, None, f"{source}; no CUDA device here")
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    return Available(host, int(free), f"{source}; torch.cuda.mem_get_info")


@dataclass(frozen=True)
class MemoryPlan:
    """A run's estimate, the memory free when it was planned, the chunk it runs with (None: the statistics'
    default chunk fits) and whether the check ran (False: VDITSCOPE_SKIP_MEMORY_CHECK, or another executor)."""

    estimate: MemoryEstimate
    available: Available
    chunk_size: int | None
    checked: bool
    host_baseline: int | None  # this process's resident bytes when the run was planned

    def record(self, peak: dict[str, Any]) -> dict[str, Any]:
        """run.json's ``memory``: the estimate, what was free, the chunk, and the measured ``peak``."""
        return {
            "estimate": self.estimate.to_dict(),
            "available": self.available.to_dict(),
            "chunk_size": self.chunk_size,
            "checked": self.checked,
            "host_baseline_bytes": self.host_baseline,
            "peak": peak,
        }


def plan_memory(shape: ModelShape, request: MemoryRequest, *, check: bool = True, fit: bool = True) -> MemoryPlan:
    """Estimate the run, fit the statistics' chunk to the free memory (with ``fit``, for a run that passes the
    chunk on to capture, when ``request.chunk_size`` is None and the default chunk does not fit), and raise a
    one-line VditscopeError when the run cannot fit (unless ``check`` is False or VDITSCOPE_SKIP_MEMORY_CHECK
    is set). Starts CUDA's peak count."""
    from ..store.run_writer import resident_memory

    estimate = estimate_memory(shape, request)
    available = available_memory(request.device)
    chunk = None
    if fit and request.chunk_size is None and shortfall(estimate, available) is not None:
        chunk = fitted_chunk(shape, request, estimate, available)
        chunk = chunk if chunk != estimate.chunk_size else None  # the default chunk was not what failed
        if chunk is not None:
            estimate = estimate_memory(shape, replace(request, chunk_size=chunk))
    checked = check and os.environ.get(SKIP_ENV, "") in ("", "0")
    refusal = shortfall(estimate, available)
    if checked and refusal is not None:
        raise VditscopeError(refusal)
    if request.device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats(torch.device(request.device))
    return MemoryPlan(estimate, available, chunk, checked, resident_memory())


def fitted_chunk(
    shape: ModelShape, request: MemoryRequest, estimate: MemoryEstimate, available: Available
) -> int | None:
    """The largest chunk whose statistics fit what the other parts leave free on their device; None when
    the free memory is unknown or not even the smallest chunk fits."""
    free = available.device if estimate.on_cuda else available.host
    if free is None:
        return None
    itemsize = DTYPES[request.dtype].itemsize
    tokens = estimate.tokens
    call = self_attention_call(tokens, transformer_size(shape.family, shape.transformer), request, itemsize)
    budget = free - (estimate.device_bytes - estimate.statistics)
    return choose_chunk_size(
        budget, call, device=request.device, threads=request.threads, top_mass=request.top_mass,
        backend=estimate.backend,
    )  # fmt: skip


def shortfall(estimate: MemoryEstimate, available: Available) -> str | None:
    """The one line that refuses a run which does not fit what is free (None when it fits, or when what is
    free is not known)."""
    parts = estimate.parts()
    if not estimate.on_cuda:
        sides = [("host", estimate.device_bytes, available.host, parts)]
    else:
        host = [p for p in parts if p[2] == "host"]
        if estimate.offload == "none" and estimate.host_bytes > estimate.maps + estimate.videos:
            host = [p for p in parts if p[0].startswith("weights")]  # they load on the host first
        sides = [("CUDA", estimate.device_bytes, available.device, [p for p in parts if p[2] == "cuda"])]
        sides.append(("host", estimate.host_bytes, available.host, host))
    for where, need, free, side_parts in sides:
        if free is not None and need > free:
            largest = sorted(side_parts, key=lambda p: -p[1])
            named = ", ".join(f"{name} {gib(size)}" for name, size, _ in largest[:3])
            return (
                f"this run needs about {gib(need)} of {where} memory ({named}) but {gib(free)} is free: "
                f"{advice(estimate, largest, where)}; or set {SKIP_ENV}=1 to run anyway"
            )
    return None


def advice(estimate: MemoryEstimate, parts: list[tuple[str, int, str]], where: str) -> str:
    """What to change, for the two largest parts of the side (``where``: CUDA or host) that does not fit."""
    tips = []
    for name, _, _ in parts[:2]:
        if name.startswith("weights") and estimate.dtype == "float32":
            tip = "--dtype bfloat16"
        elif name.startswith("weights") and where == "CUDA" and estimate.offload == "none":
            tip = "--offload model"
        elif name.startswith("weights"):
            tip = "a GPU with more memory" if where == "CUDA" else "a machine with more RAM"
        elif name.startswith("maps"):
            tip = "fewer --layers or --map-steps, or a smaller --map-tiles"
        elif name.startswith("videos"):
            tip = "fewer prompts or seeds"
        else:
            tip = "a smaller --height, --width or --num-frames"
        if tip not in tips:
            tips.append(tip)
    return "use " + " or ".join(tips)


def gib(size: int) -> str:
    """Bytes as the tables print them: GiB with 2 decimals, MiB below 1 GiB."""
    return f"{size / GIB:.2f} GiB" if size >= GIB else f"{size / 2**20:.1f} MiB"


def directory_shape(model_dir: Path, executor: str) -> ModelShape | None:
    """The shape of the model directory; for another executor than "local", None when this machine cannot
    read it (its workers load the model; the driver may hold only its settings)."""
    if executor == "local":
        return ModelShape.from_directory(model_dir)
    try:
        return ModelShape.from_directory(model_dir)
    except (VditscopeError, OSError):
        return None


def check_generation(
    model_dir: Path, generation: dict[str, Any], device: str, dtype: str, *, videos: int = 1,
    chunk_size: int | None = None, executor: str = "local", offload: str = "none",
) -> MemoryPlan | None:  # fmt: skip
    """The check of a generating command that keeps no token maps (generate, edit, sweeps, sinks,
    text-ablation): weights, one call's activations and statistics at the chunk it runs with (no chunk is
    fitted: these commands do not pass one on), and the ``videos`` it keeps; before loading. Checked for the
    local executor only (Ray workers' memory is not this machine's)."""
    request = MemoryRequest(
        generation, resolve_device(device), dtype, generations=videos, chunk_size=chunk_size, offload=offload
    )
    shape = directory_shape(model_dir, executor)
    return None if shape is None else plan_memory(shape, request, check=executor == "local", fit=False)


def memory_table(plan: MemoryPlan) -> Any:
    """The estimate as a table (pandas): one row per part, then the totals per side, with where it is held."""
    import pandas as pd

    estimate = plan.estimate
    rows = [(name, where, size) for name, size, where in estimate.parts()]
    if estimate.on_cuda:
        rows += [("total on cuda", "cuda", estimate.device_bytes), ("total on host", "host", estimate.host_bytes)]
    else:
        rows.append(("total", "host", estimate.device_bytes))
    table = pd.DataFrame(rows, columns=["part", "where", "bytes"])
    table["size"] = [gib(size) for size in table["bytes"]]
    return table


def memory_summary(plan: MemoryPlan) -> list[str]:
    """The lines printed around the table: the model and sizes, the tokens, the chunk, what is free, the verdict."""
    estimate, available = plan.estimate, plan.available
    tokens = estimate.tokens
    grid = " x ".join(str(n) for n in tokens.grid)
    free = [f"host {gib(available.host)}" if available.host is not None else "host unknown"]
    if estimate.on_cuda:
        free.append(f"cuda {gib(available.device)}" if available.device is not None else "cuda unknown")
    verdict = shortfall(estimate, available)
    known = available.host is not None and (available.device is not None or not estimate.on_cuda)
    return [
        f"{estimate.model} ({estimate.family}), {estimate.dtype} on {estimate.device}",
        f"tokens: {grid} video + {tokens.joint_text} text = {tokens.self_tokens:,} per self-attention call; "
        f"{tokens.branches} guidance branch(es), {tokens.batch} sample(s) per call; {tokens.frames} frames decoded",
        f"statistics: {estimate.backend} path, chunk of {estimate.chunk_size} query rows",
        f"free now: {', '.join(free)} ({available.source})",
        verdict or ("fits what is free now" if known else "what is free on that device is not known here"),
    ]
