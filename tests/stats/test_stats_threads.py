"""The CPU thread split over heads gives the same numbers as one thread and leaves settings alone."""

from __future__ import annotations

import torch

from vditscope import TokenLayout, attention_stats
from vditscope.stats import streaming


def test_threaded_heads_match_single_thread(monkeypatch) -> None:
    torch.manual_seed(3)
    q, k, v = (torch.randn(2, 3, 5 * 13 * 17, 16) * 2 for _ in range(3))
    layout = TokenLayout(5, 13, 17)
    threads = torch.get_num_threads()
    monkeypatch.setattr(streaming, "THREADED_MIN_SCORES", 0)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    out_threaded, threaded = attention_stats(q, k, v, layout=layout, chunk_size=97)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    out_single, single = attention_stats(q, k, v, layout=layout, chunk_size=97)
    monkeypatch.undo()
    assert torch.get_num_threads() == threads
    torch.testing.assert_close(out_threaded, out_single, atol=1e-6, rtol=1e-6)
    assert threaded.keys() == single.keys()
    for key in single:
        torch.testing.assert_close(threaded[key], single[key], atol=1e-6, rtol=1e-5)


def test_worker_exceptions_reach_the_caller(monkeypatch) -> None:
    monkeypatch.setattr(streaming, "THREADED_MIN_SCORES", 0)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)

    def broken(*args, **kwargs):
        raise RuntimeError("chunk failed")

    monkeypatch.setattr(streaming, "_chunk_step", broken)
    q = torch.randn(1, 2, 8, 4)
    try:
        attention_stats(q, q, q)
    except RuntimeError as exc:
        assert "chunk failed" in str(exc)
    else:
        raise AssertionError("the worker's exception was swallowed")
