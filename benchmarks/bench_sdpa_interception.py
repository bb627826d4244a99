"""How the SDPA interception of capture/ should work: a scoped TorchFunctionMode ("mode", pushed only inside
observed attention modules) against the process-global rebinding of F.scaled_dot_product_attention
("rebind"). Per-generation time on the shipped tiny pipeline (interleaved, median), bit-identity of the
outputs and equality of the records, and a quick torch.compile check (dynamo, eager backend).

Usage: python benchmarks/bench_sdpa_interception.py [--repeats 15] [--forward-repeats 100] [--steps 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import numpy as np
import torch

import vditscope
from vditscope.capture import capture, sdpa_patch
from vditscope.capture.intervene import AttentionEdit, intervene

PROMPT = "a red square moving left on a black background"
KINDS = sdpa_patch.INTERCEPTIONS


def load_pipeline() -> Any:
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(vditscope.tiny_model_dir("tiny-wan"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def scenarios(pipe: Any) -> dict[str, Callable[[], AbstractContextManager[Any]]]:
    """Each scenario opens the sessions around one generation and yields what they recorded."""

    @contextmanager
    def both() -> Iterator[Any]:
        with intervene(pipe, [AttentionEdit(bottom_k=0.5, layers={1})]), capture(pipe) as cap:
            yield cap

    return {
        "no session": nullcontext,
        "intervene, identity edit (routing only)": lambda: intervene(pipe, [AttentionEdit()]),
        "capture, all layers": lambda: capture(pipe),
        "capture, layer 0 only": lambda: capture(pipe, layers=[0]),
        "intervene bottom-k 0.5 + capture": both,
    }


def generate(pipe: Any, settings: dict[str, Any]) -> np.ndarray:
    out = pipe(prompt=PROMPT, generator=torch.Generator().manual_seed(0), output_type="np", **settings)
    return np.asarray(out.frames)


def first_forward_inputs(pipe: Any, settings: dict) -> tuple[tuple, dict]:
    """(args, kwargs) of the transformer's first forward in a generation (CFG batch of the pipeline)."""
    seen: list[tuple[tuple, dict]] = []
    handle = pipe.transformer.register_forward_pre_hook(
        lambda _m, args, kwargs: seen.append((args, kwargs)) if not seen else None, with_kwargs=True
    )
    try:
        generate(pipe, settings)
    finally:
        handle.remove()
    return seen[0]


def run(work: Callable[[], Any], open_session: Callable[[], AbstractContextManager[Any]]) -> tuple[float, Any, Any]:
    """(seconds, output, the session's table or None) of ``work`` inside the scenario's sessions."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with open_session() as session, torch.no_grad():
            started = time.perf_counter()
            output = work()
            seconds = time.perf_counter() - started
    table = session.table() if hasattr(session, "table") else None
    return seconds, output, table


def timings(work: Callable[[], Any], cases: dict, repeats: int) -> tuple[dict, dict]:
    """Interleaved runs: every repeat runs every scenario under both interceptions (order alternating)."""
    times: dict[tuple[str, str], list[float]] = {(name, kind): [] for name in cases for kind in KINDS}
    outputs: dict[tuple[str, str], tuple[Any, Any]] = {}
    run(work, nullcontext)  # warm-up
    for repeat in range(repeats):
        for name, open_session in cases.items():
            for kind in KINDS if repeat % 2 == 0 else KINDS[::-1]:
                with sdpa_patch.interception(kind):
                    seconds, output, table = run(work, open_session)
                times[name, kind].append(seconds)
                outputs.setdefault((name, kind), (output, table))
    return times, outputs


def mode_op_count(pipe: Any, settings: dict) -> int:
    """Torch functions that pass through the routing mode in one generation with capture on."""
    count = [0]
    original = sdpa_patch.RoutingMode.__torch_function__

    def counting(self: Any, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        count[0] += 1
        return original(self, func, types, args, kwargs)

    sdpa_patch.RoutingMode.__torch_function__ = counting  # type: ignore[method-assign]
    try:
        with sdpa_patch.interception("mode"):
            run(lambda: generate(pipe, settings), lambda: capture(pipe))
    finally:
        sdpa_patch.RoutingMode.__torch_function__ = original  # type: ignore[method-assign]
    return count[0]


def per_op_cost_us(repeats: int = 7, ops: int = 2000) -> float:
    """Added cost (microseconds) of one torch function passing through the pushed routing mode (best of
    ``repeats``, mode minus no mode): what the mode adds to every op inside an observed module."""
    x = torch.zeros(4)

    def loop() -> float:
        started = time.perf_counter()
        for _ in range(ops):
            torch.add(x, 1.0)
        return time.perf_counter() - started

    plain, routed = [], []
    for _ in range(repeats):
        plain.append(loop())
        with sdpa_patch.interception("mode"), sdpa_patch.routed_sdpa():
            routed.append(loop())
    return 1e6 * (min(routed) - min(plain)) / ops


def compile_check(pipe: Any, settings: dict) -> list[str]:
    """Whether capture runs on a dynamo-compiled transformer (eager backend: tracing only), per interception."""
    import torch._dynamo

    logging.getLogger("torch._dynamo").setLevel(logging.ERROR)
    work = lambda: generate(pipe, settings)  # noqa: E731
    _, reference, reference_table = run(work, lambda: capture(pipe))
    lines = []
    for kind in KINDS:
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        pipe.transformer.compile(backend="eager")
        try:
            with sdpa_patch.interception(kind):
                _, frames, table = run(work, lambda: capture(pipe))
            breaks = sum(torch._dynamo.utils.counters["graph_break"].values())
            same = np.array_equal(frames, reference) and table.equals(reference_table)
            lines.append(f"{kind}: runs, {breaks} graph breaks, frames and table {'identical' if same else 'DIFFER'}")
        except Exception as exc:  # the check reports, it does not stop the benchmark
            lines.append(f"{kind}: fails: {type(exc).__name__}: {str(exc).splitlines()[0][:150]}")
        finally:
            pipe.transformer._compiled_call_impl = None
            torch._dynamo.reset()
    return lines


def report(title: str, times: dict, outputs: dict, plain: Any, unit: float, label: str) -> list[str]:
    """One table: median and best time per scenario and interception, and the output checks."""
    rows = [
        f"{title:42} {'rebind':>22} {'mode':>22} {'mode/rebind':>16}  outputs",
        f"{'':42} {'median (best) ' + label:>22}",
    ]
    for name in dict.fromkeys(name for name, _ in times):
        med = {kind: statistics.median(times[name, kind]) for kind in KINDS}
        cells = [f"{med[k] / unit:9.2f} ({min(times[name, k]) / unit:8.2f})" for k in ("rebind", "mode")]
        (out_r, table_r), (out_m, table_m) = outputs[name, "rebind"], outputs[name, "mode"]
        check = (
            "mode == rebind"
            if same(out_r, out_m) and (table_r is None or table_r.equals(table_m))
            else "MODE != REBIND"
        )
        if "identity" in name or name.startswith("capture"):
            check += ", == no session" if same(out_m, plain) else ", != NO SESSION"
        best = min(times[name, "mode"]) / min(times[name, "rebind"])
        ratio = f"{med['mode'] / med['rebind']:.3f} ({best:.3f})"
        rows.append(f"{name:42} {cells[0]:>22} {cells[1]:>22} {ratio:>16}  {check}")
    return rows


def same(a: Any, b: Any) -> bool:
    """Bit-identical arrays or tensors."""
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return np.array_equal(np.asarray(a), np.asarray(b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--forward-repeats", type=int, default=100)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile check")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load_pipeline()
    shipped = json.loads((vditscope.tiny_model_dir("tiny-wan") / "vditscope.json").read_text())["generation"]
    settings = dict(shipped, num_inference_steps=args.steps, num_frames=args.frames)
    cases = scenarios(pipe)
    print(f"# {__file__.rsplit('/', 1)[-1]}: tiny-wan, {json.dumps(settings)}, torch {torch.__version__},")
    print(f"# {args.threads} threads; interleaved repeats, both interceptions in alternating order")
    args_kwargs = first_forward_inputs(pipe, settings)
    forward = lambda: pipe.transformer(*args_kwargs[0], **args_kwargs[1])[0]  # noqa: E731
    times, outputs = timings(forward, cases, args.forward_repeats)
    title = f"one transformer forward ({args.forward_repeats} runs)"
    print("\n".join(report(title, times, outputs, run(forward, nullcontext)[1], 1e-3, "ms")))
    work = lambda: generate(pipe, settings)  # noqa: E731
    times, outputs = timings(work, cases, args.repeats)
    title = f"one generation ({args.repeats} runs)"
    print("\n".join(report(title, times, outputs, work(), 1e-3, "ms")))
    ops, cost = mode_op_count(pipe, settings), per_op_cost_us()
    print(f"torch functions passing through the routing mode per generation (capture, all layers): {ops}")
    print(
        f"added cost per function passing through the mode: {cost:.2f} us -> {ops * cost / 1000:.2f} ms per generation"
    )
    if not args.no_compile:
        print("torch.compile (dynamo, backend='eager') with capture:")
        print("\n".join("  " + line for line in compile_check(pipe, settings)))


if __name__ == "__main__":
    main()
