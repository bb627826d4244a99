"""Where and how a loaded pipeline runs: its device, offloading (weights on the CPU between uses),
compilation of its transformer(s), and context parallelism across the processes of a ``torchrun`` launch.
Checked before any weight is read (``Placement.check``), applied after loading (``Placement.apply``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import VditscopeError
from .base import TRANSFORMER_COMPONENTS

OFFLOADS = ("none", "model", "sequential", "group")
COMPILES = ("none", "regional", "model")


@dataclass(frozen=True)
class Placement:
    """``device`` ("cuda", "cpu", ...), ``offload`` (OFFLOADS), ``compile`` (COMPILES: "regional" compiles each
    transformer block in place with full graphs, diffusers' ``compile_repeated_blocks``; "model" wraps the
    transformer in ``torch.compile``) and ``context_parallel`` (Ulysses degree: one process per GPU)."""

    device: str
    offload: str = "none"
    compile: str = "none"
    context_parallel: int = 1

    def check(self) -> None:
        """Refuse unknown choices and combinations the device or launch cannot run, before loading weights."""
        if self.offload not in OFFLOADS:
            raise VditscopeError(f"unknown offload {self.offload}; choose one of {', '.join(OFFLOADS)}")
        if self.offload == "sequential" and self.device.split(":")[0] == "cpu":
            # diffusers names the device cpu:0, and accelerate turns weights moved there into plain tensors
            raise VditscopeError("--offload sequential needs an accelerator device (cuda); on cpu use model or group")
        if self.compile not in COMPILES:
            raise VditscopeError(f"unknown compile mode {self.compile}; choose one of {', '.join(COMPILES)}")
        if self.context_parallel < 1:
            raise VditscopeError(f"--context-parallel must be positive, got {self.context_parallel}")
        if self.context_parallel > 1:
            check_launch(self.context_parallel, self.offload)

    def apply(self, pipe: Any) -> None:
        """Place the loaded pipeline: devices or offloading, then context parallelism, then compilation."""
        place_pipeline(pipe, self.device, self.offload)
        if self.context_parallel > 1:
            enable_context_parallel(pipe, self.context_parallel, self.device)
        compile_transformers(pipe, self.compile)


def check_launch(degree: int, offload: str) -> None:
    """Context parallelism needs one process per rank, started by torchrun, and the weights on the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != degree:
        raise VditscopeError(
            f"--context-parallel {degree} needs {degree} processes: start it with "
            f"torchrun --nproc-per-node {degree} -m vditscope.cli ... (this launch has {world})"
        )
    if offload != "none":
        raise VditscopeError("--context-parallel splits the sequence over GPUs; use it without --offload")


def parallel_device(device: str, degree: int) -> str:
    """The device of this rank: with context parallelism on CUDA, the GPU of its local rank."""
    if degree > 1 and device == "cuda":
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def place_pipeline(pipe: Any, device: str, offload: str) -> None:
    """Put the pipeline on ``device``, all of it (offload "none"), or with its weights kept on the CPU and
    moved to the device per component ("model"), per submodule ("sequential") or per group ("group": a
    transformer block at a time, a leaf module at a time for the text encoders and the VAE)."""
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    elif offload == "group":
        from diffusers.hooks import apply_group_offloading

        for name, component in pipe.components.items():
            if not isinstance(component, torch.nn.Module):
                continue
            # transformers a block at a time; text encoders and the VAE a leaf module at a time
            grouping = {"offload_type": "leaf_level"}
            if name in TRANSFORMER_COMPONENTS:
                grouping = {"offload_type": "block_level", "num_blocks_per_group": 1}
            apply_group_offloading(component, torch.device(device), torch.device("cpu"), **grouping)
    else:
        pipe.to(device)


def compile_transformers(pipe: Any, mode: str) -> None:
    """Compile the pipeline's transformer(s): each block in place ("regional") or the whole model ("model")."""
    for name in TRANSFORMER_COMPONENTS:
        model = pipe.components.get(name)
        if not isinstance(model, torch.nn.Module) or mode == "none":
            continue
        if mode == "regional":
            if not getattr(model, "_repeated_blocks", None):  # diffusers' compile_repeated_blocks would fail
                raise VditscopeError(
                    f"--compile regional needs the transformer's repeated blocks, and diffusers lists none for "
                    f"{type(model).__name__}; use --compile model"
                )
            model.compile_repeated_blocks(fullgraph=True)
        else:
            setattr(pipe, name, torch.compile(model))


@contextmanager
def _cpu_device_count() -> Iterator[None]:
    """diffusers picks a rank's device as ``rank % torch.accelerator.device_count()``, which divides by zero
    on a CPU-only torch: for the call, count the CPU as one device (rehearsals with gloo on a CPU)."""
    count = torch.accelerator.device_count
    if count() > 0:
        yield
        return
    torch.accelerator.device_count = lambda: 1  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.accelerator.device_count = count  # type: ignore[assignment]


def enable_context_parallel(pipe: Any, degree: int, device: str) -> None:
    """Join the torchrun process group (NCCL on CUDA, gloo on the CPU) and split each transformer's sequence
    over ``degree`` ranks with Ulysses attention (each rank: every token, 1/degree of the heads)."""
    import torch.distributed as dist
    from diffusers import ContextParallelConfig

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    for name in TRANSFORMER_COMPONENTS:
        model = pipe.components.get(name)
        if not isinstance(model, torch.nn.Module):
            continue
        if not getattr(model, "_cp_plan", None):
            raise VditscopeError(
                f"diffusers has no context-parallel plan for {type(model).__name__}; "
                "run it on one GPU (Wan and LTX have one)"
            )
        with _cpu_device_count():
            model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=degree))
