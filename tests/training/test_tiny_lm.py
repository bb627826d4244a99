"""The shipped tiny language model (attention sinks to compare with) and its resumable trainer."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vditscope.errors import VditscopeError
from vditscope.tiny import ASSETS, SHIPPED_MODELS, TEXT_MODELS, tiny_model_dir
from vditscope.training import tiny_lm

# one layer, two query heads sharing one key/value head, trained on short batches of the documentation only
TINY = replace(tiny_lm.TinyLMConfig(), vocab_size=320, hidden=16, layers=1, heads=2, kv_heads=1, ffn_dim=32)
SMALL = replace(TINY, context=16, batch=2, stdlib=False, docs_repeat=1)
TEXTS = [
    "The quick brown fox jumps over the lazy dog while the children watch from the garden.",
    "A list comprehension consists of brackets containing an expression followed by a for clause, "
    "then zero or more for or if clauses. The result will be a new list resulting from evaluating "
    "the expression in the context of the for and if clauses which follow it.",
]


def test_shipped_lm_loads_offline_and_prepends_bos() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = tiny_model_dir("tiny-lm")
    assert directory == ASSETS / "tiny-lm" and "tiny-lm" in TEXT_MODELS and "tiny-lm" not in SHIPPED_MODELS
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(directory, attn_implementation="sdpa", local_files_only=True)
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    ids = tokenizer(TEXTS[0], return_tensors="pt")["input_ids"]
    assert ids[0, 0].item() == tokenizer.bos_token_id == model.config.bos_token_id
    assert tokenizer.convert_ids_to_tokens(ids[0, 0].item()) == "<|bos|>"
    assert (ids[0, 1:] != tokenizer.bos_token_id).all()
    assert tokenizer.decode(ids[0], skip_special_tokens=True) == TEXTS[0]
    assert tokenizer.eos_token == "<|eos|>" and tokenizer.pad_token is not None
    # a trained model: held-out documentation is far likelier than chance (ln 2048 = 7.6 nats)
    held = tokenizer(tiny_lm.sink_texts(1)[0], return_tensors="pt", truncation=True)["input_ids"]
    assert held.shape[1] == tokenizer.model_max_length == model.config.max_position_embeddings
    with torch.no_grad():
        loss = model(input_ids=held, labels=held).loss.item()
    assert loss < 4.5, loss


def test_shipped_lm_has_attention_sinks() -> None:
    """After the first layer most heads draw >= 10x the median key's attention to <|bos|>, as in real LMs."""
    directory = tiny_model_dir("tiny-lm")
    figures = tiny_lm.sink_figures(directory, [*tiny_lm.sink_texts(4), TEXTS[1]])
    assert figures.ratio.shape[0] >= 2 and np.isfinite(figures.ratio).all()
    assert (figures.ratio[1:] >= 10).mean() > 0.5, np.round(figures.ratio, 1)
    assert figures.share[1:].max() > 0.5 and figures.share[0].max() < 0.2, np.round(figures.share, 2)
    assert (figures.ratio_all_queries >= figures.ratio).all()
    metrics = json.loads((directory / "vditscope.json").read_text())["metrics"]
    assert metrics["heldout_docs_loss"] < 4.0 and metrics["heldout_code_loss"] < 4.0
    later = [figures for layer, figures in metrics["sinks"].items() if int(layer) >= 1]
    assert sum(f["heads_at_threshold"] for f in later) > sum(f["heads"] for f in later) / 2


def test_shipped_assets_stay_small() -> None:
    lm = sum(p.stat().st_size for p in tiny_model_dir("tiny-lm").rglob("*") if p.is_file())
    assert lm <= 3 * 2**20
    total = sum(p.stat().st_size for p in ASSETS.rglob("*") if p.is_file())
    assert total < 25 * 2**20


def test_corpus_holds_text_out() -> None:
    docs = tiny_lm.corpus(SMALL)
    assert docs.train and docs.heldout_docs and not docs.heldout_code
    held = {p for text in docs.heldout_docs for p in text.split("\n\n") if len(p) > 200}
    assert held and not held & {p for text in docs.train for p in text.split("\n\n")}
    full = tiny_lm.corpus(tiny_lm.TinyLMConfig())
    assert full.heldout_code and not set(full.heldout_code) & set(full.train)
    assert len(full.train) > len(docs.train) * tiny_lm.TinyLMConfig.docs_repeat


def test_tokenizer_prepends_bos_to_every_text() -> None:
    tokenizer = tiny_lm.build_tokenizer(tiny_lm.corpus(SMALL).train, SMALL.vocab_size)
    assert len(tokenizer) == SMALL.vocab_size
    batch = tokenizer(TEXTS, padding=True)
    assert all(ids[0] == tokenizer.bos_token_id == 0 for ids in batch["input_ids"])
    assert tokenizer.pad_token_id == 2 and batch["input_ids"][0][-1] == 2


def test_training_resumes_to_the_same_weights_and_exports(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    from transformers import AutoModelForCausalLM

    tiny_lm.train_tiny_lm(tmp_path / "straight", 4, SMALL)
    # an interrupted run: the time limit stops it after its first step, with a checkpoint
    tiny_lm.train_tiny_lm(tmp_path / "resumed", 4, SMALL, minutes=0)
    assert json.loads((tmp_path / "resumed" / tiny_lm.STATE).read_text())["step"] == 1
    tiny_lm.train_tiny_lm(tmp_path / "resumed", 4, SMALL, eval_every=4)
    straight = load_file(str(tmp_path / "straight" / tiny_lm.CHECKPOINT))
    resumed = load_file(str(tmp_path / "resumed" / tiny_lm.CHECKPOINT))
    assert straight.keys() == resumed.keys() and any(k.startswith("optim/") for k in straight)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    state = json.loads((tmp_path / "resumed" / tiny_lm.STATE).read_text())
    assert state["step"] == 4 and state["history"][-1]["heldout_docs_loss"] > 0
    with pytest.raises(ValueError, match="another configuration"):
        tiny_lm.train_tiny_lm(tmp_path / "resumed", 4, replace(SMALL, lr=1e-3))

    capfd.readouterr()
    target = tiny_lm.export_tiny_lm(tmp_path / "resumed", tmp_path / "export", storage="float16")
    printed = capfd.readouterr()  # no library progress bars (transformers' "Loading weights", "Writing shards")
    assert "it/s" not in printed.err + printed.out
    model, _, _ = tiny_lm.load_trained_lm(tmp_path / "resumed")
    loaded = AutoModelForCausalLM.from_pretrained(target, attn_implementation="sdpa", local_files_only=True)
    # stored in float16, computed in float32: the trained weights, rounded once
    stored = load_file(str(target / "model.safetensors"))
    assert loaded.dtype == torch.float32 and {v.dtype for v in stored.values()} == {torch.float16}
    expected = {k: v.half().float() for k, v in model.state_dict().items()}
    assert all(torch.equal(v, expected[k]) for k, v in loaded.state_dict().items())
    info = json.loads((target / "vditscope.json").read_text())
    assert info["training"]["steps"] == 4 and set(info["metrics"]["sinks"]) == {"0"}
    assert 0 < info["metrics"]["heldout_docs_loss"] < 7


def test_unknown_text_model_is_refused() -> None:
    with pytest.raises(VditscopeError, match="unknown shipped model"):
        tiny_model_dir("tiny-gpt")


def test_batches_are_deterministic_and_repeat_on_request() -> None:
    stream = np.arange(10, 1000, dtype=np.int64)
    plain = tiny_lm.make_batch(replace(SMALL, repeat_fraction=0.0), 3, stream)
    assert plain.shape == (SMALL.batch, SMALL.context) and (plain[:, 0] == 0).all()
    assert torch.equal(plain, tiny_lm.make_batch(replace(SMALL, repeat_fraction=0.0), 3, stream))
    assert (plain[:, 2:] - plain[:, 1:-1] == 1).all()  # consecutive stream windows
    repeated = tiny_lm.make_batch(replace(SMALL, repeat_fraction=1.0), 3, stream)
    half = SMALL.context // 2
    assert torch.equal(repeated[:, 1 : 1 + half - 1], repeated[:, 1 + half : 2 * half])


def test_held_out_losses_come_every_eval_steps_between_checkpoints(tmp_path: Path) -> None:
    seen: list[tuple[int, dict[str, float]]] = []
    tiny_lm.train_tiny_lm(
        tmp_path / "run",
        5,
        SMALL,
        checkpoint_every=4,
        eval_every=2,
        on_eval=lambda step, loss: seen.append((step, loss)),
    )
    assert [step for step, _ in seen] == [2, 4, 5]  # every 2 steps and at the end, not only at checkpoint 4
    assert all(set(losses) == {"docs"} and losses["docs"] > 0 for _, losses in seen)
    history = json.loads((tmp_path / "run" / tiny_lm.STATE).read_text())["history"]
    assert [entry["step"] for entry in history if "heldout_docs_loss" in entry] == [2, 4, 5]
    assert history[-1]["heldout_docs_loss"] == seen[-1][1]["docs"]
