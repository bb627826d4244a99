"""Text-token dominance ablation: generate while only the first text token reaches the video.

Two ways, both family-agnostic:
- ``mask``: every attention call that has text keys (joint self-attention, or cross-attention)
  drops all text keys but the first (the model's SDPA on the remaining keys);
- ``truncate``: the text encoder's output keeps its first token and zeros the rest (as if the
  prompt embedding were cut after one token; Wan pads with zeros the same way).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .calls import ObservedCall
from .selection import Selection
from .session import HookSession, SessionObserver, Technique

ABLATIONS = ("mask", "truncate")


@dataclass(frozen=True)
class TextMaskConfig:
    """Where to hide the text keys but the first (default: every self- and cross-attention site)."""

    where: Selection = field(default_factory=Selection)


class FirstTextTokenMask(SessionObserver):
    """Hides every text key but the first from each attention call."""

    def __init__(self, session: HookSession, config: TextMaskConfig | None = None) -> None:
        super().__init__(session)
        self.config = config or TextMaskConfig()
        self.masked_calls = 0

    def observe(self, call: ObservedCall) -> torch.Tensor:
        sdpa = call.sdpa
        k, v, attn_mask = sdpa.k, sdpa.v, sdpa.attn_mask
        kwargs = {name: value for name, value in sdpa.kwargs.items() if name != "attn_mask"}
        num = k.shape[2]
        if call.site.kind == "image":  # image-to-video: the image-token call has no text keys
            return sdpa.run()
        if call.site.kind == "cross":
            keep = torch.tensor([0], device=k.device)
        else:
            layout = self.adapter.layout(call.state.grid, num)
            if layout.text is None or layout.num_text < 2:
                return sdpa.run()
            hidden = torch.zeros(num, dtype=torch.bool, device=k.device)
            hidden[layout.text[0] + 1 : layout.text[1]] = True
            keep = (~hidden).nonzero().flatten()
        if attn_mask is not None:
            while attn_mask.ndim < 4:
                attn_mask = attn_mask.unsqueeze(0)
            attn_mask = attn_mask[..., keep] if attn_mask.shape[-1] == num else attn_mask
        self.masked_calls += 1
        return sdpa.original(sdpa.q, k[:, :, keep], v[:, :, keep], attn_mask=attn_mask, **kwargs)


def _keep_first_token(_module: nn.Module, _args: Any, output: Any) -> Any:
    """Forward hook on a text encoder: zero every token's hidden state but the first."""
    hidden = output[0] if isinstance(output, tuple) else getattr(output, "last_hidden_state", output)
    if isinstance(hidden, torch.Tensor) and hidden.ndim == 3:
        hidden[:, 1:] = 0
    return output


TEXT_MASK = Technique("first_text_token_only", FirstTextTokenMask, hook="vditscope_text_ablation")


@contextmanager
def first_text_token_only(pipeline: Any, method: str = "mask") -> Iterator[FirstTextTokenMask | None]:
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
    with apply_text_mask(pipeline, TextMaskConfig()) as session:
        yield session


def apply_text_mask(model_or_pipeline: Any, config: TextMaskConfig) -> AbstractContextManager[FirstTextTokenMask]:
    """Hide every text key but the first in the calls ``config.where`` selects; yields the mask observer."""
    return TEXT_MASK.apply(model_or_pipeline, config)
