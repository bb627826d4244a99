"""Checkpoints of a training run: tensors (weights, AdamW moments) as safetensors, the rest as JSON.

The run's JSON state (step, settings, loss history) is stored twice: in the safetensors header,
where it is replaced atomically together with the weights it describes (the copy a resume
trusts), and in ``state.json`` for people and tools. Nothing is pickled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..store import write_atomic

CHECKPOINT = "checkpoint.safetensors"
STATE = "state.json"


def optimizer_step(
    optimizer: torch.optim.Optimizer, loss: torch.Tensor, params: list[torch.nn.Parameter], lr: float
) -> float:
    """One AdamW step of every trainer here: set the learning rate (times a parameter group's ``lr_scale``, 1 when
    it has none), backpropagate, clip the gradient norm to 1, step; returns the loss as a float."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    return float(loss.item())


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The Adam(W) moments of every parameter that has them, as ``optim/{i}/exp_avg[_sq]``."""
    tensors: dict[str, torch.Tensor] = {}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for i, param in enumerate(params):
        state = optimizer.state.get(param, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                tensors[f"optim/{i}/{key}"] = state[key].detach().clone()
    return tensors


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], step: int) -> None:
    """Put saved Adam(W) moments back; ``step`` is the number of optimizer steps taken so far."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for i, param in enumerate(params):
        if f"optim/{i}/exp_avg" in tensors:
            optimizer.state[param] = {
                "step": torch.tensor(float(step)),
                "exp_avg": tensors[f"optim/{i}/exp_avg"].to(param.device),
                "exp_avg_sq": tensors[f"optim/{i}/exp_avg_sq"].to(param.device),
            }


def save_checkpoint(directory: Path, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    """Write ``tensors`` and ``state`` to ``directory`` atomically (the previous checkpoint is replaced)."""
    contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    text = json.dumps(state, indent=1)
    write_atomic(directory / CHECKPOINT, lambda path: save_file(contiguous, str(path), metadata={"state": text}))
    write_atomic(directory / STATE, lambda path: path.write_text(text + "\n"))


def load_checkpoint(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """(tensors, state) of the last checkpoint in ``directory``, or None when there is none."""
    path = directory / CHECKPOINT
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
    if "state" in metadata:
        return tensors, json.loads(metadata["state"])
    if not (directory / STATE).is_file():  # an old checkpoint without its state in the header
        return None
    return tensors, json.loads((directory / STATE).read_text())
