"""What an observer sees: one routed torch SDPA call (`SdpaCall`) and where and when it was made
(`ObservedCall`: site, forward state, batch offset)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..adapters import AttentionSite
from .state import ForwardState


@dataclass
class SdpaCall:
    """One routed torch SDPA call: its tensors and options, and the SDPA to run it with."""

    original: Callable[..., torch.Tensor]
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    attn_mask: torch.Tensor | None
    dropout_p: float
    is_causal: bool
    scale: float | None
    enable_gqa: bool

    @property
    def kwargs(self) -> dict[str, Any]:
        """The options as SDPA keyword arguments."""
        kwargs = {
            "attn_mask": self.attn_mask,
            "dropout_p": self.dropout_p,
            "is_causal": self.is_causal,
            "scale": self.scale,
        }
        if self.enable_gqa:
            kwargs["enable_gqa"] = True
        return kwargs

    def run(self) -> torch.Tensor:
        """The call as the model made it."""
        return self.original(self.q, self.k, self.v, **self.kwargs)

    def labels(self, state: ForwardState, start: int) -> list[tuple[str, int]]:
        """(branch, sample) of each batch element, the call's first element being batch row ``start``."""
        return [state.labels[(start + i) % len(state.labels)] for i in range(self.q.shape[0])]


@dataclass
class ObservedCall:
    """An SDPA call of an observed attention site: the site (its ``kind`` that of this call: an I2V cross
    site's image call is "image"), the transformer forward it belongs to, and ``start``, the batch row of
    the forward that is the call's first element (counted over the site's calls of that kind)."""

    site: AttentionSite
    state: ForwardState
    start: int
    sdpa: SdpaCall

    @property
    def labels(self) -> list[tuple[str, int]]:
        """(CFG branch, sample index) of each batch element of the call."""
        return self.sdpa.labels(self.state, self.start)

    def run(self) -> torch.Tensor:
        """The call as the model made it (the observer's pass-through)."""
        return self.sdpa.run()
