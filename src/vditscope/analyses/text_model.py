"""Language models for the sink comparison: the per-key statistics of each attention layer of a text model
(loaded by ``adapters/text_models.py``) on one text, and the same with sinks removed.

The model runs with ``attn_implementation="sdpa"``, so every layer's attention reaches torch SDPA
with its final q, k, v (after RoPE, grouped-query heads as they are); the routed SDPA hands each
call to the statistics in call order, which is the layer order of one forward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..adapters.text_models import TextModel
from ..capture.sdpa_patch import routed_sdpa, sdpa_handler
from ..capture.session import SdpaCall
from ..capture.sink_ablation import ablate_call
from ..capture.sink_capture import call_key_stats
from ..errors import VditscopeError
from ..stats.key_stats import KeyStats, key_stats

DEFAULT_TEXT = (
    "The history of the city begins in the early middle ages, when a small market grew around the "
    "bridge. Merchants came from the north and the south; they traded wool, salt and wine. By 1400 "
    "the town had a wall, three churches and a school."
)


def _encode(text_model: TextModel, text: str, max_tokens: int) -> dict[str, torch.Tensor]:
    if not text.strip():
        raise VditscopeError("the text is empty")
    device = next(text_model.model.parameters()).device
    encoded = text_model.tokenizer(text, return_tensors="pt", truncation=True, max_length=max_tokens)
    return {name: value.to(device) for name, value in encoded.items() if name in ("input_ids", "attention_mask")}


def _run_routed(text_model: TextModel, inputs: dict[str, torch.Tensor], handler: Callable[..., torch.Tensor]) -> Any:
    with torch.no_grad(), routed_sdpa(), sdpa_handler(handler):
        return text_model.model(**inputs)


def text_key_stats(
    text_model: TextModel, text: str, *, max_tokens: int = 512, chunk_size: int | None = None
) -> tuple[list[KeyStats], list[str]]:
    """Per layer (call order), the key statistics of one forward pass on ``text``; and its tokens."""
    inputs = _encode(text_model, text, max_tokens)
    per_layer: list[KeyStats] = []

    def handler(original, q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa):
        call = SdpaCall(original, q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa)
        per_layer.append(
            key_stats(q, k, v, scale=scale, attn_mask=attn_mask, is_causal=is_causal, chunk_size=chunk_size)
        )
        return call.run()

    _run_routed(text_model, inputs, handler)
    if not per_layer:
        raise VditscopeError(
            f"the attention of {text_model.directory.name} does not go through torch SDPA "
            "(its transformers class has no sdpa attention); vditscope sinks cannot observe it"
        )
    tokens = [str(t) for t in text_model.tokenizer.convert_ids_to_tokens(inputs["input_ids"][0].tolist())]
    return per_layer, tokens


def text_ablation(
    text_model: TextModel,
    text: str,
    layers: set[int],
    *,
    path: str,
    selection: str,
    threshold: float,
    seed: int = 0,
    max_tokens: int = 512,
) -> dict[str, float]:
    """Sinks (or random keys) removed in ``layers``: next-token loss (causal models) and the relative
    change of the model's last output, against the unchanged forward pass. The sinks are those of the
    unchanged pass, per layer and head (an ablated early layer changes what later layers attend to), and
    the random control hides as many keys of the same layer and head."""
    inputs = _encode(text_model, text, max_tokens)
    counter = [0, 0]  # SDPA calls of the dense and of the ablated pass: the layer index
    dense_sinks: dict[int, torch.Tensor] = {}
    removed: list[float] = []

    def plain(original, q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa):
        call = SdpaCall(original, q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa)
        layer = counter[0]
        counter[0] += 1
        if layer in layers:
            dense_sinks[layer] = call_key_stats(call, None).sinks(threshold)
        return call.run()

    def ablating(original, q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa):
        call = SdpaCall(original, q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa)
        layer = counter[1]
        counter[1] += 1
        if layer not in layers:
            return call.run()
        generator = torch.Generator().manual_seed(seed * 1_000_003 + layer)
        out, chosen, _ = ablate_call(
            call, path=path, selection=selection, threshold=threshold, generator=generator, fixed=dense_sinks[layer]
        )
        removed.append(float(chosen.float().sum(-1).mean()))
        return out

    dense = _run_routed(text_model, inputs, plain)
    edited = _run_routed(text_model, inputs, ablating)
    result = {"keys_per_head": float(sum(removed) / len(removed)) if removed else 0.0}
    out_dense, out_edited = _main_output(dense), _main_output(edited)
    result["output_change"] = float((out_edited - out_dense).norm() / out_dense.norm().clamp(min=1e-12))
    if text_model.causal:
        labels = inputs["input_ids"][0, 1:]
        result["loss"] = float(torch.nn.functional.cross_entropy(out_edited[0, :-1].float(), labels))
        result["loss_dense"] = float(torch.nn.functional.cross_entropy(out_dense[0, :-1].float(), labels))
    return result


def _main_output(output: Any) -> torch.Tensor:
    """Logits of a causal LM, else the last hidden state."""
    logits = getattr(output, "logits", None)
    return logits if logits is not None else output.last_hidden_state
