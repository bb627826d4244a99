"""A capture shows itself in a notebook: what was observed and the mean statistics, every string escaped."""

from __future__ import annotations

import torch

from tests.families import make_wan
from vditscope.capture import capture


def test_capture_repr_html_summarises_the_table_and_escapes_notes() -> None:
    case = make_wan()
    with torch.no_grad(), capture(case.model) as cap:
        case.model(**case.inputs)
    cap.session.notes.append("<script>alert(1)</script>")
    html = cap._repr_html_()
    table = cap.table()
    mean = table[(table.layer == 0) & (table.kind == "self")].entropy.mean()
    assert f"({len(table)} rows in <code>table()</code>)" in html and "<td>wan</td>" in html
    assert f"<td>{mean:.3f}</td>" in html and "<td>torch</td>" in html
    assert "<script>" not in html and "&lt;script&gt;" in html
