"""Bad input gives one clear error, early: attention_stats / sparse_attention on tensors SDPA would
refuse (or that used to give zeros, NaN or a 256 GB allocation), a capture opened twice on one model,
and a Ray --address where no Ray cluster listens."""

from __future__ import annotations

import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import vditscope
from vditscope import attention_stats, capture
from vditscope.errors import VditscopeError
from vditscope.layout import TokenLayout
from vditscope.stats.sparsify import sparse_attention
from vditscope.stats.structured import WIDE, structured_attention

from .families import make_wan


def qkv(batch: int = 1, heads: int = 2, num: int = 64, dim: int = 8, kv_heads: int | None = None, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    kv_heads = heads if kv_heads is None else kv_heads
    q = torch.randn(batch, heads, num, dim, generator=generator)
    k = torch.randn(batch, kv_heads, num, dim, generator=generator)
    v = torch.randn(batch, kv_heads, num, dim, generator=generator)
    return q, k, v


# -- attention_stats / sparse_attention --------------------------------------------------------------

BAD_INPUTS = {
    "int64": (lambda q, k, v: (q.long(), k.long(), v.long()), "q, k and v must be floating point, got torch.int64"),
    "one int": (
        lambda q, k, v: (q, k.long(), v),
        "floating point, got q torch.float32, k torch.int64, v torch.float32",
    ),
    "dtypes": (lambda q, k, v: (q, k.double(), v), "same dtype, got q torch.float32, k torch.float64, v torch.float32"),
    "devices": (lambda q, k, v: (q, k.to("meta"), v), "same device, got q cpu, k meta, v cpu"),
    "3-D": (lambda q, k, v: (q[0], k, v), "must be 4-D (B, H, N, D)"),
    "batch": (lambda q, k, v: (q, k.expand(2, -1, -1, -1), v), "same batch size, got q 1, k 2, v 1"),
    "kv heads": (lambda q, k, v: (q, k, v[:, :1]), "k and v must have the same number of heads, got k 2, v 1"),
    "kv length": (lambda q, k, v: (q, k, v[:, :, :32]), "k and v must have the same length (keys), got k 64, v 32"),
    "head dim": (lambda q, k, v: (q, k[..., :4], v), "q and k must have the same head dimension, got q 8, k 4"),
    "heads": (lambda q, k, v: (q, k[:, :1].expand(1, 3, -1, -1), v[:, :1].expand(1, 3, -1, -1)), "multiple of key"),
}


@pytest.mark.parametrize("function", [attention_stats, sparse_attention], ids=["attention_stats", "sparse_attention"])
@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_tensors_give_one_clear_error(function, case: str) -> None:
    change, message = BAD_INPUTS[case]
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        function(*change(*qkv()))
    assert "\n" not in str(info.value)


def test_structured_attention_checks_its_tensors_scale_and_chunk_size() -> None:
    """chunk_size=-3 used to skip every chunk and return uninitialized memory."""
    layout = TokenLayout(2, 4, 8)
    q, k, v = qkv()
    with pytest.raises(ValueError, match="chunk_size must be a positive integer, got -3"):
        structured_attention(q, k, v, layout=layout, kind="spatial", chunk_size=-3)
    with pytest.raises(ValueError, match=r"floating point, got torch\.int64"):
        structured_attention(q.long(), k.long(), v.long(), layout=layout, kind="spatial")
    with pytest.raises(ValueError, match="scale must be a positive finite number"):
        structured_attention(q, k, v, layout=layout, kind="spatial", scale=float("nan"))
    out, _, _ = structured_attention(q, k, v, layout=layout, kind="tiles", window=(WIDE, WIDE, WIDE), chunk_size=10**9)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), atol=1e-5, rtol=1e-5)


def test_a_mask_on_another_device_and_no_keys_are_refused() -> None:
    q, k, v = qkv()
    mask = torch.ones(64, 64, dtype=torch.bool, device="meta")
    with pytest.raises(ValueError, match=r"attn_mask must be on the device of q, k and v \(cpu\), got meta"):
        attention_stats(q, k, v, attn_mask=mask)
    with pytest.raises(ValueError, match="no keys"):
        attention_stats(q, k[:, :, :0], v[:, :, :0])


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), -float("inf"), 0.0, -0.5, "big"])
def test_scale_must_be_positive_and_finite(scale) -> None:
    for function in (attention_stats, sparse_attention):
        with pytest.raises(ValueError, match="scale must be a positive finite number"):
            function(*qkv(), scale=scale)


@pytest.mark.parametrize("chunk_size", [0, -3, 1.5, True])
def test_chunk_size_must_be_a_positive_integer(chunk_size) -> None:
    for function in (attention_stats, sparse_attention):
        with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
            function(*qkv(), chunk_size=chunk_size)


@pytest.fixture
def no_large_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.empty / torch.zeros refuse anything over 16 Mi elements, instead of allocating it."""
    limit = 1 << 24

    def guarded(original):
        def allocate(*size, **kwargs):
            shape = size[0] if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else size
            numel = 1
            for extent in shape:
                numel *= int(extent)
            if numel > limit:
                raise AssertionError(f"a buffer of {tuple(shape)} ({numel} elements) was requested")
            return original(*size, **kwargs)

        return allocate

    monkeypatch.setattr(torch, "empty", guarded(torch.empty))
    monkeypatch.setattr(torch, "zeros", guarded(torch.zeros))


def test_a_huge_chunk_size_sizes_buffers_by_the_queries(no_large_buffers) -> None:
    """chunk_size=10**9 at N=64 used to ask for 10**9 x 64 float32 score buffers (256 GB)."""
    q, k, v = qkv()
    reference = F.scaled_dot_product_attention(q, k, v)
    out, stats = attention_stats(q, k, v, chunk_size=10**9, top_mass="estimate")
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)
    _, small_chunks = attention_stats(q, k, v, chunk_size=7, top_mass="estimate")
    for name in ("entropy", "received", "topk_mass"):
        torch.testing.assert_close(stats[name], small_chunks[name], atol=1e-5, rtol=1e-5)
    sparse_out, _ = sparse_attention(q, k, v, chunk_size=10**9)
    torch.testing.assert_close(sparse_out, reference, atol=1e-5, rtol=1e-5)
    # cross-attention with few queries and many keys: the default chunk is cut to the queries too
    out, _ = attention_stats(q[:, :, :3], k, v)
    torch.testing.assert_close(out, reference[:, :, :3], atol=1e-5, rtol=1e-5)


def test_the_guard_catches_a_huge_buffer(no_large_buffers) -> None:
    with pytest.raises(AssertionError, match="was requested"):
        torch.empty(10**9, 64)


def test_what_sdpa_accepts_still_works() -> None:
    """Grouped-query heads, an explicit scale, float64 and float16 inputs."""
    q, k, v = qkv(heads=4, kv_heads=2)
    out, _ = attention_stats(q, k, v, scale=0.3)
    reference = F.scaled_dot_product_attention(q, k, v, scale=0.3, enable_gqa=True)
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)
    out, _ = attention_stats(q.double(), k.double(), v.double(), chunk_size=5)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out.float(), F.scaled_dot_product_attention(q, k, v, enable_gqa=True), atol=1e-5, rtol=0)
    out, _ = attention_stats(q.half(), k.half(), v.half())
    assert out.dtype == torch.float16


# -- capture -----------------------------------------------------------------------------------------


def _traces(model: torch.nn.Module) -> list[str]:
    """Modules that still carry a hook registry or an instance forward."""
    return [
        name
        for name, module in model.named_modules()
        if "_diffusers_hook" in module.__dict__ or "forward" in module.__dict__
    ]


def _forward(case) -> torch.Tensor:
    with torch.no_grad():
        return case.model(**case.inputs, return_dict=False)[0]


def test_nested_capture_is_refused_and_the_outer_one_keeps_working() -> None:
    case = make_wan()
    reference = _forward(case)
    assert _traces(case.model) == []
    with capture(case.model) as outer:
        with pytest.raises(VditscopeError, match="capture is already open on this model; close it first"):  # noqa: SIM117
            with capture(case.model):
                pytest.fail("the inner capture opened")
        # also when other layers are chosen
        with pytest.raises(VditscopeError, match="already open"), capture(case.model, layers=[1]):
            pass
        observed = _forward(case)
    assert torch.equal(observed, reference)
    table = outer.table()
    assert len(table) > 0 and sorted(table[table.kind == "self"].layer.unique()) == [0, 1]
    assert _traces(case.model) == []
    assert F.scaled_dot_product_attention is torch._C._nn.scaled_dot_product_attention
    with capture(case.model) as again:  # closed for good: a new capture opens
        _forward(case)
    assert len(again.table()) == len(table)


def test_sessions_of_different_kinds_still_compose() -> None:
    case = make_wan()
    with capture(case.model) as cap, vditscope.intervene(case.model, [vditscope.AttentionEdit(bottom_k=0.3)]):
        _forward(case)
        with pytest.raises(VditscopeError, match="intervene is already open on this model"):  # noqa: SIM117
            with vditscope.intervene(case.model, [vditscope.AttentionEdit(bottom_k=0.5)]):
                pass
    assert len(cap.table()) > 0
    assert _traces(case.model) == []


# -- Ray --address -----------------------------------------------------------------------------------


@pytest.fixture
def fake_service() -> Iterator[Callable[..., str]]:
    """Start a TCP server on a free local port that answers each connection with ``reply`` (or says
    nothing, or closes); yields a function reply -> "127.0.0.1:PORT"."""
    servers: list[socket.socket] = []

    def start(reply: bytes | None, close: bool = True) -> str:
        server = socket.create_server(("127.0.0.1", 0))
        servers.append(server)

        def serve() -> None:
            while True:
                try:
                    conn, _ = server.accept()
                except OSError:
                    return
                with conn:
                    conn.settimeout(5)
                    try:
                        conn.recv(1024)
                        if reply is not None:
                            conn.sendall(reply)
                        if not close:
                            time.sleep(5)
                    except OSError:
                        pass

        threading.Thread(target=serve, daemon=True).start()
        return f"127.0.0.1:{server.getsockname()[1]}"

    yield start
    for server in servers:
        server.close()


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", "an HTTP server answers there"),
        (b"-ERR unknown command 'PRI'\r\n", "answered b'-ERR unkn"),
        (b"", "closed the connection without a gRPC answer"),
    ],
    ids=["http", "garbage", "closes"],
)
def test_an_address_without_ray_is_refused_fast_before_importing_ray(
    fake_service, monkeypatch: pytest.MonkeyPatch, reply: bytes, message: str
) -> None:
    from vditscope.executors.ray_cluster import connect

    monkeypatch.setitem(sys.modules, "ray", None)  # importing ray would fail: the probe must come first
    address = fake_service(reply)
    started = time.monotonic()
    with pytest.raises(VditscopeError) as info:
        connect(address)
    assert time.monotonic() - started < 3
    text = str(info.value)
    assert "\n" not in text and text.startswith(f"no Ray cluster at {address}: ") and message in text, text
    assert "GCS port" in text


def test_a_silent_service_is_refused_after_the_answer_timeout(fake_service) -> None:
    from vditscope.executors.ray_cluster import probe

    address = fake_service(None, close=False)
    started = time.monotonic()
    with pytest.raises(VditscopeError, match=f"no Ray cluster at ray://{address}: .* within 0.5 s; .*Ray Client port"):
        probe(f"ray://{address}", answer_seconds=0.5)
    assert time.monotonic() - started < 3


def test_a_closed_port_and_a_grpc_server() -> None:
    from vditscope.executors.ray_cluster import probe

    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        port = placeholder.getsockname()[1]
    with pytest.raises(VditscopeError, match=f"cannot reach a Ray cluster at 127.0.0.1:{port}"):
        probe(f"127.0.0.1:{port}")
    grpc = pytest.importorskip("grpc")  # Ray depends on grpcio: where Ray is installed, so is it
    from concurrent.futures import ThreadPoolExecutor

    server = grpc.server(ThreadPoolExecutor(1))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        probe(f"127.0.0.1:{port}")  # a gRPC server passes (Ray's GCS is one)
        probe(f"ray://127.0.0.1:{port}")
    finally:
        server.stop(0)


@pytest.mark.parametrize(
    "address", ["head-node", "head-node:ray", "head-node:70000", "head-node:0", ":6379", "http://head:6379", "h:-1"]
)
def test_an_address_that_does_not_parse_gives_one_line(monkeypatch: pytest.MonkeyPatch, address: str) -> None:
    from vditscope.executors.ray_cluster import connect

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(VditscopeError, match="bad --address") as info:
        connect(address)
    assert "\n" not in str(info.value)
