"""Train the small causal language model that ships with vditscope (``tiny-lm``).

Attention sinks in video diffusion transformers are compared with those of language models;
with no hub access, vditscope ships its own small Llama (RoPE, SwiGLU, one shared key/value
head) trained on text every Python install has: the ``pydoc_data`` topics (English) and the
standard library's sources, with a byte-level BPE tokenizer that puts ``<|bos|>`` first, as
real LMs do.

Sinks emerge in real LMs after billions of tokens; this budget is a few million, so half of the
training sequences repeat their first half (text quoting itself, as code and boilerplate do).
Copying grows heads that are active only where text repeats and rest on ``<|bos|>`` elsewhere,
and with one shared key head the rest of their layer uses the same sink: in the shipped model
most heads after the first layer put a large share of attention on ``<|bos|>`` on ordinary text.
Without the repeats, runs of a similar budget grew no sink (every head's first-token share < 0.1).

Runs are deterministic and resumable from safetensors checkpoints (atomic): a run stopped by a
time limit, Ctrl-C or a kill continues from its last checkpoint and reaches the same weights as
an uninterrupted run. ``vditscope train-tiny-lm --out RUN_DIR --export TARGET``.
"""

from __future__ import annotations

import json
import math
import sys
import sysconfig
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..adapters.loading import quiet_loading
from ..stats.key_stats import sink_baseline
from ..store import OutputDir
from ..thresholds import SINK_RATIO
from .checkpoint import optimizer_step

CHECKPOINT = "checkpoint.safetensors"
STATE = "state.json"
TOKENIZER = "tokenizer.json"
BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"


@dataclass(frozen=True)
class TinyLMConfig:
    """Tokenizer and model sizes and the training recipe of the tiny language model."""

    vocab_size: int = 2048
    hidden: int = 128
    layers: int = 3
    heads: int = 4
    kv_heads: int = 1  # multi-query attention: a layer's heads share keys, so they share a sink
    ffn_dim: int = 256
    context: int = 128  # tokens per training sequence, <|bos|> included
    batch: int = 16
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.1
    heldout_every: int = 10  # every tenth pydoc paragraph and standard-library file is held out
    stdlib: bool = True  # add the standard library's Python sources (ten times the text of the topics)
    docs_repeat: int = 4  # the English topics weigh this many times in the training stream
    repeat_fraction: float = 0.5  # share of training sequences whose second half repeats their first
    seed: int = 0


class Corpus(NamedTuple):
    """Training documents and the held-out English (pydoc) and Python (standard library) documents."""

    train: list[str]
    heldout_docs: list[str]
    heldout_code: list[str]


# standard-library folders that are tests, data tables, GUI demos or this corpus's other half
SKIPPED_STDLIB = {"test", "tests", "idle_test", "site-packages", "idlelib", "lib2to3", "tkinter", "turtledemo"}
SKIPPED_STDLIB |= {"ensurepip", "pydoc_data", "encodings", "__pycache__"}


def stdlib_sources() -> list[str]:
    """The Python sources of the running interpreter's standard library, in sorted path order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    texts = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if SKIPPED_STDLIB & set(relative.parts) or relative.parts[0].startswith("config-"):
            continue
        if relative.name.startswith("_sysconfigdata"):
            continue
        texts.append(path.read_text(encoding="utf-8", errors="replace"))
    return texts


def corpus(config: TinyLMConfig) -> Corpus:
    """Text every Python install has: the pydoc topics (English) and, optionally, the stdlib sources.

    Every ``heldout_every``-th topic paragraph and source file is held out, so held-out text is
    never trained on but covers the same mix of topics as training.
    """
    from pydoc_data.topics import topics

    paragraphs = [topics[name].split("\n\n") for name in sorted(topics)]
    counted = [(i, p) for i, p in enumerate(p for topic in paragraphs for p in topic)]
    held_out = {p for i, p in counted if i % config.heldout_every == config.heldout_every - 1}
    # a held-out paragraph that a topic repeats is held out wherever it appears
    docs = ["\n\n".join(p for p in topic if p not in held_out) for topic in paragraphs]
    held_docs = ["\n\n".join(p for p in topic if p in held_out) for topic in paragraphs]
    held_docs = [text for text in held_docs if text]
    code = stdlib_sources() if config.stdlib else []
    held_code = code[config.heldout_every - 1 :: config.heldout_every]
    train_code = [text for i, text in enumerate(code) if i % config.heldout_every != config.heldout_every - 1]
    return Corpus(docs * config.docs_repeat + train_code, held_docs, held_code)


def build_tokenizer(texts: Sequence[str], vocab_size: int, context: int = TinyLMConfig.context) -> Any:
    """A byte-level BPE trained on ``texts``, wrapped for transformers; every encoding starts with <|bos|>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    backend.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B:1", special_tokens=[(BOS, 0)]),
        ]
    )
    return wrap_tokenizer(backend, context)


def wrap_tokenizer(backend: Any, context: int = TinyLMConfig.context) -> Any:
    """The transformers tokenizer around a ``tokenizers.Tokenizer`` with the tiny LM's special tokens."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        padding_side="right",
        model_max_length=context,
    )


def build_model(config: TinyLMConfig, vocab_size: int) -> Any:
    """A freshly initialized Llama (RoPE, SwiGLU, tied embeddings); deterministic from config.seed."""
    from transformers import LlamaConfig, LlamaForCausalLM

    model_config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=config.hidden,
        intermediate_size=config.ffn_dim,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        num_key_value_heads=config.kv_heads,
        max_position_embeddings=config.context,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
        rms_norm_eps=1e-5,
        dtype="float32",
    )
    torch.manual_seed(config.seed)
    model = LlamaForCausalLM._from_config(model_config, attn_implementation="sdpa", dtype=torch.float32)
    return model


def token_stream(tokenizer: Any, texts: Sequence[str]) -> np.ndarray:
    """All documents as one id stream (no <|bos|>), each followed by <|eos|>."""
    eos = tokenizer.convert_tokens_to_ids(EOS)
    ids: list[int] = []
    for encoding in tokenizer.backend_tokenizer.encode_batch(list(texts), add_special_tokens=False):
        ids.extend(encoding.ids)
        ids.append(eos)
    return np.asarray(ids, dtype=np.int64)


def make_batch(config: TinyLMConfig, step: int, stream: np.ndarray) -> torch.Tensor:
    """Token ids (B, context) for one step: <|bos|> then a random window; deterministic in (seed, step)."""
    rng = np.random.default_rng([config.seed, step])
    width = config.context - 1
    starts = rng.integers(0, len(stream) - width + 1, size=config.batch)
    repeated = rng.random(config.batch) < config.repeat_fraction
    half = (width + 1) // 2
    windows = np.stack(
        [
            np.tile(stream[s : s + half], 2)[:width] if r else stream[s : s + width]
            for s, r in zip(starts, repeated, strict=True)
        ]
    )
    bos = np.zeros((config.batch, 1), dtype=np.int64)
    return torch.from_numpy(np.concatenate([bos, windows], axis=1))


def heldout_batches(config: TinyLMConfig, stream: np.ndarray, limit: int = 512) -> list[torch.Tensor]:
    """<|bos|>-prefixed windows of the held-out stream, in batches: all non-overlapping ones, or
    ``limit`` evenly spaced ones where there are more (to keep evaluation quick)."""
    width = config.context - 1
    starts = np.arange(0, len(stream) - width + 1, width)
    if len(starts) > limit:
        starts = starts[np.linspace(0, len(starts) - 1, limit).round().astype(int)]
    rows = [np.concatenate([[0], stream[s : s + width]]) for s in starts]
    return [torch.from_numpy(np.stack(rows[i : i + config.batch])) for i in range(0, len(rows), config.batch)]


@torch.no_grad()
def heldout_loss(model: Any, config: TinyLMConfig, stream: np.ndarray) -> float:
    """Mean next-token cross-entropy (nats) over the held-out windows (``heldout_batches``)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for ids in heldout_batches(config, stream):
        logits = model(input_ids=ids).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum"
        )
        total, count = total + loss.item(), count + ids[:, 1:].numel()
    model.train(was_training)
    return total / count


def _save_checkpoint(
    directory: Path, model: Any, optimizer: torch.optim.Optimizer, step: int, config: TinyLMConfig, history: list[dict]
) -> None:
    """Weights and AdamW moments as safetensors, the rest as JSON; each written atomically."""
    tensors = {f"model/{k}": v.detach().clone() for k, v in model.state_dict().items()}
    for i, param in enumerate(p for group in optimizer.param_groups for p in group["params"]):
        state = optimizer.state.get(param, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                tensors[f"optim/{i}/{key}"] = state[key].detach().clone()
    tmp = directory / (CHECKPOINT + ".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(directory / CHECKPOINT)
    state_tmp = directory / (STATE + ".tmp")
    state_tmp.write_text(json.dumps({"step": step, "config": asdict(config), "history": history}, indent=1))
    state_tmp.replace(directory / STATE)


def _load_weights(model: Any, tensors: dict[str, torch.Tensor]) -> None:
    model.load_state_dict({k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")})


def _load_checkpoint(directory: Path, model: Any, optimizer: torch.optim.Optimizer) -> tuple[int, list[dict]]:
    state = json.loads((directory / STATE).read_text())
    tensors = load_file(str(directory / CHECKPOINT))
    _load_weights(model, tensors)
    for i, param in enumerate(p for group in optimizer.param_groups for p in group["params"]):
        if f"optim/{i}/exp_avg" in tensors:
            optimizer.state[param] = {
                "step": torch.tensor(float(state["step"])),
                "exp_avg": tensors[f"optim/{i}/exp_avg"],
                "exp_avg_sq": tensors[f"optim/{i}/exp_avg_sq"],
            }
    return int(state["step"]), list(state["history"])


def _run_tokenizer(out: Path, config: TinyLMConfig, train_texts: Sequence[str]) -> Any:
    """The run's tokenizer: trained at the first start and kept in the run, so a resume reuses it."""
    from tokenizers import Tokenizer

    path = out / TOKENIZER
    if path.is_file():
        return wrap_tokenizer(Tokenizer.from_file(str(path)), config.context)
    tokenizer = build_tokenizer(train_texts, config.vocab_size, config.context)
    tmp = out / (TOKENIZER + ".tmp")
    tokenizer.backend_tokenizer.save(str(tmp))
    tmp.replace(path)
    return tokenizer


def _param_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices (embeddings included), none on the norm gains."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def train_tiny_lm(
    out: Path,
    steps: int,
    config: TinyLMConfig | None = None,
    *,
    minutes: float | None = None,
    checkpoint_every: int = 200,
    eval_every: int = 0,
    progress: Callable[[int, int, float], None] | None = None,
    overwrite: bool = False,
    on_eval: Callable[[int, dict[str, float]], None] | None = None,
) -> Path:
    """Train (or resume) the tiny LM in ``out``; stops at ``steps`` or after ``minutes``. Returns ``out``.

    ``eval_every`` > 0 measures held-out losses (docs, code) every that many steps and at the end, whether or
    not a checkpoint falls there: they go into the history and to ``on_eval(step, {name: loss})``.
    ``out`` is new or an earlier run of train-tiny-lm (the output policy, ``store/output.py``).
    """
    schedule = Schedule(steps, minutes, checkpoint_every, eval_every)
    with OutputDir(out, "train-tiny-lm", overwrite=overwrite, resumable=True) as output:
        output.open()
        return _train(output.path, config or TinyLMConfig(), schedule, progress, on_eval)


@dataclass(frozen=True)
class Schedule:
    """When a training run stops, checkpoints and measures its held-out losses."""

    steps: int
    minutes: float | None
    checkpoint_every: int
    eval_every: int

    def evaluates(self, step: int) -> bool:
        return self.eval_every > 0 and (step % self.eval_every == 0 or step == self.steps)

    def checkpoints(self, step: int, timed_out: bool) -> bool:
        return step % self.checkpoint_every == 0 or step == self.steps or timed_out


def _train(
    out: Path,
    config: TinyLMConfig,
    schedule: Schedule,
    progress: Callable[[int, int, float], None] | None,
    on_eval: Callable[[int, dict[str, float]], None] | None,
) -> Path:
    if (out / STATE).is_file():
        saved = TinyLMConfig(**json.loads((out / STATE).read_text())["config"])
        if saved != config:
            raise ValueError(f"{out} holds a run with another configuration; use another directory")
    texts = corpus(config)
    tokenizer = _run_tokenizer(out, config, texts.train)
    stream = token_stream(tokenizer, texts.train)
    held = {"docs": token_stream(tokenizer, texts.heldout_docs)}
    if texts.heldout_code:
        held["code"] = token_stream(tokenizer, texts.heldout_code)
    model = build_model(config, len(tokenizer))
    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.95))
    step, history = 0, []
    if (out / STATE).is_file() and (out / CHECKPOINT).is_file():
        step, history = _load_checkpoint(out, model, optimizer)
    model.train()
    started = time.perf_counter()
    losses: list[float] = []
    steps, minutes = schedule.steps, schedule.minutes
    while step < steps:
        ids = make_batch(config, step, stream)
        loss = model(input_ids=ids, labels=ids).loss
        cosine = 0.5 * (1 + math.cos(math.pi * min(step / steps, 1)))
        lr = config.lr * min(1.0, (step + 1) / config.warmup) * max(cosine, 0.1)
        losses.append(optimizer_step(optimizer, loss, list(model.parameters()), lr))
        step += 1
        if progress:
            progress(step, steps, float(np.mean(losses[-50:])))
        timed_out = minutes is not None and time.perf_counter() - started > minutes * 60
        checkpoint = schedule.checkpoints(step, timed_out)
        if checkpoint or schedule.evaluates(step):
            entry: dict[str, Any] = {"step": step, "loss": float(np.mean(losses[-schedule.checkpoint_every :]))}
            if schedule.evaluates(step):
                heldout = {name: heldout_loss(model, config, held_stream) for name, held_stream in held.items()}
                entry.update({f"heldout_{name}_loss": value for name, value in heldout.items()})
                if on_eval:
                    on_eval(step, heldout)
            history.append(entry)
        if checkpoint:
            _save_checkpoint(out, model, optimizer, step, config, history)
        if timed_out:
            break
    model.eval()
    return out


def load_trained_lm(run_dir: Path) -> tuple[Any, Any, TinyLMConfig]:
    """Model (eval mode), tokenizer and configuration of a run directory, at its last checkpoint."""
    from tokenizers import Tokenizer

    run_dir = Path(run_dir)
    config = TinyLMConfig(**json.loads((run_dir / STATE).read_text())["config"])
    tokenizer = wrap_tokenizer(Tokenizer.from_file(str(run_dir / TOKENIZER)), config.context)
    model = build_model(config, len(tokenizer))
    _load_weights(model, load_file(str(run_dir / CHECKPOINT)))
    return model.eval(), tokenizer, config


class SinkFigures(NamedTuple):
    """Per (layer, head) arrays, averaged over texts, of how much attention the first token draws.

    ``ratio``: the attention the first token receives over the median a key receives (floored at the
    uniform share, ``key_stats.sink_baseline``), a key's
    received attention being its mean over the queries that can see it (a uniform causal pattern
    scores about 4 at 128 tokens). ``ratio_all_queries``: the same with every key's mean taken
    over all queries, masked ones counting 0 (uniform scores about 8 at 128 tokens).
    ``share``: the mean attention queries past position ``skip`` give the first token.
    """

    ratio: np.ndarray
    ratio_all_queries: np.ndarray
    share: np.ndarray


@torch.no_grad()
def sink_figures(
    model_dir: Path, texts: Sequence[str], context: int = TinyLMConfig.context, skip: int = 16
) -> SinkFigures:
    """Measure the first-token sink of every head of a saved model (eager attention) on ``texts``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)
    with quiet_loading():  # no library progress bar in the command's output
        model = AutoModelForCausalLM.from_pretrained(
            model_dir,
            attn_implementation="eager",
            dtype=torch.float32,
            local_files_only=True,
            trust_remote_code=False,
            use_safetensors=True,
        ).eval()
    ratio, ratio_all, share = [], [], []
    for text in texts:
        ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=context)["input_ids"]
        attentions = [layer[0] for layer in model(input_ids=ids, output_attentions=True).attentions]  # (H, T, T)
        visible = torch.arange(ids.shape[1], 0, -1, dtype=torch.float32)  # queries that see each key
        for out, received in (
            (ratio, [a.sum(dim=1) / visible for a in attentions]),
            (ratio_all, [a.mean(dim=1) for a in attentions]),
        ):
            out.append(np.stack([(r[:, 0] / sink_baseline(r[:, 1:])).numpy() for r in received]))
        share.append(np.stack([a[:, skip:, 0].mean(dim=1).numpy() for a in attentions]))
    return SinkFigures(np.mean(ratio, axis=0), np.mean(ratio_all, axis=0), np.mean(share, axis=0))


def sink_texts(count: int = 16, config: TinyLMConfig | None = None) -> list[str]:
    """Typical texts to measure sinks on: the longest held-out English documents, cut to 2000 characters."""
    held = corpus(replace(config or TinyLMConfig(), stdlib=False)).heldout_docs
    return [text.strip()[:2000] for text in sorted(held, key=len, reverse=True)[:count]]


def sink_summary(figures: SinkFigures, threshold: float = SINK_RATIO) -> dict[str, Any]:
    """Per layer: heads whose first-token ratio (either way) >= threshold, max and median ratio, mean share."""
    return {
        str(layer): {
            "heads": int(figures.ratio.shape[1]),
            "heads_at_threshold": int((figures.ratio[layer] >= threshold).sum()),
            "heads_at_threshold_all_queries": int((figures.ratio_all_queries[layer] >= threshold).sum()),
            "max_ratio": round(float(figures.ratio[layer].max()), 2),
            "median_ratio": round(float(np.median(figures.ratio[layer])), 2),
            "max_first_token_share": round(float(figures.share[layer].max()), 3),
            "mean_first_token_share": round(float(figures.share[layer].mean()), 3),
        }
        for layer in range(figures.ratio.shape[0])
    }


def export_tiny_lm(run_dir: Path, target: Path, storage: str = "float32", overwrite: bool = False) -> Path:
    """Save the trained LM as a transformers directory (safetensors, tokenizer) plus vditscope.json metrics.

    ``storage`` "float16" halves the file; config.json still says float32, so ``from_pretrained``
    computes in float32. The metrics are measured on the saved directory, as users will load it.
    """
    from transformers import AutoModelForCausalLM

    output = OutputDir(target, "train-tiny-lm export", inputs=[run_dir], overwrite=overwrite)
    with output, output.staging() as target, quiet_loading():  # no library progress bars in the command's output
        model, tokenizer, config = load_trained_lm(run_dir)
        model.config.use_cache = True
        model.to(getattr(torch, storage)).save_pretrained(target)
        settings = json.loads((target / "config.json").read_text())
        settings = {**settings, "dtype": "float32"}
        (target / "config.json").write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
        tokenizer.save_pretrained(target)
        model = AutoModelForCausalLM.from_pretrained(
            target, attn_implementation="sdpa", local_files_only=True, trust_remote_code=False, use_safetensors=True
        ).eval()
        texts = corpus(config)
        losses = {"docs": heldout_loss(model, config, token_stream(tokenizer, texts.heldout_docs))}
        if texts.heldout_code:
            losses["code"] = heldout_loss(model, config, token_stream(tokenizer, texts.heldout_code))
        texts = sink_texts(config=config)
        figures = sink_figures(target, texts, config.context, skip=config.context // 8)
        state = json.loads((Path(run_dir) / STATE).read_text())
        info = {
            "trained": True,
            "training": {**asdict(config), "steps": state["step"], "storage": storage},
            "corpus": "pydoc_data.topics (English documentation) and, with stdlib, the standard library's sources"
            f" (Python {sys.version_info.major}.{sys.version_info.minor}); every tenth paragraph and file held out",
            "metrics": {
                **{f"heldout_{k}_loss": round(v, 4) for k, v in losses.items()},
                **{f"heldout_{k}_perplexity": round(math.exp(v), 2) for k, v in losses.items()},
                "sinks": sink_summary(figures),
            },
            "history": state["history"],
        }
        (target / "vditscope.json").write_text(json.dumps(info, indent=1) + "\n")
    return output.path
