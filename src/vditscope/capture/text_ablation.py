"""Text-token dominance ablation: generate while only the first text token reaches the video.

Two ways, both family-agnostic:
- ``mask``: every attention call that has text keys (joint self-attention, or cross-attention)
  drops all text keys but the first (the model's SDPA on the remaining keys);
- ``truncate``: the text encoder's output keeps its first token and zeros the rest (as if the
  prompt embedding were cut after one token; Wan pads with zeros the same way).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..adapters import AttentionSite, FamilyAdapter, adapter_for
from .session import Capture, ForwardState, SdpaCall, attached, transformers_of

ABLATIONS = ("mask", "truncate")


class FirstTextTokenMask(Capture):
    """Hooks that hide every text key but the first from each attention call."""

    hook_name = "vditscope_text_ablation"
    session_name = "first_text_token_only"

    def __init__(self, models: list[nn.Module], adapter: FamilyAdapter, sites: list[AttentionSite]) -> None:
        super().__init__(
            models, adapter, sites, steps=None, top_mass="off", fused=False, chunk_size=None, keep_maps=False
        )
        self.masked_calls = 0

    def _observe(self, site: AttentionSite, state: ForwardState, start: int, call: SdpaCall) -> torch.Tensor:
        k, v, attn_mask = call.k, call.v, call.attn_mask
        kwargs = {name: value for name, value in call.kwargs.items() if name != "attn_mask"}
        num = k.shape[2]
        if site.kind == "cross":
            keep = torch.tensor([0], device=k.device)
        else:
            layout = self.adapter.layout(state.grid, num)
            if layout.text is None or layout.num_text < 2:
                return call.run()
            hidden = torch.zeros(num, dtype=torch.bool, device=k.device)
            hidden[layout.text[0] + 1 : layout.text[1]] = True
            keep = (~hidden).nonzero().flatten()
        if attn_mask is not None:
            while attn_mask.ndim < 4:
                attn_mask = attn_mask.unsqueeze(0)
            attn_mask = attn_mask[..., keep] if attn_mask.shape[-1] == num else attn_mask
        self.masked_calls += 1
        return call.original(call.q, k[:, :, keep], v[:, :, keep], attn_mask=attn_mask, **kwargs)


def _keep_first_token(_module: nn.Module, _args: Any, output: Any) -> Any:
    """Forward hook on a text encoder: zero every token's hidden state but the first."""
    hidden = output[0] if isinstance(output, tuple) else getattr(output, "last_hidden_state", output)
    if isinstance(hidden, torch.Tensor) and hidden.ndim == 3:
        hidden[:, 1:] = 0
    return output


@contextmanager
def first_text_token_only(pipeline: Any, method: str = "mask") -> Iterator[Capture | None]:
    """Generations inside the block see only the first text token (``mask`` or ``truncate``)."""
    if method not in ABLATIONS:
        raise ValueError(f"unknown ablation {method!r}; choose {' or '.join(ABLATIONS)}")
    if method == "truncate":
        encoder = getattr(pipeline, "text_encoder", None)
        if not isinstance(encoder, nn.Module):
            raise ValueError("truncate needs a pipeline with a text encoder")
        handle = encoder.register_forward_hook(_keep_first_token)
        try:
            yield None
        finally:
            handle.remove()
        return
    models, scheduler = transformers_of(pipeline)
    adapter = adapter_for(models[0])
    sites = [site for model in models for site in adapter.sites(model)]
    session = FirstTextTokenMask(models, adapter, sites)
    with attached(session, models, scheduler):
        yield session
