"""Figure helpers whose numbers a reader relies on."""

from __future__ import annotations

import numpy as np

from vditscope.report.figures import pareto_front


def test_pareto_front_keeps_only_undominated_points() -> None:
    # equal sparsities listed worse-first: the old front drew a vertical segment through (0.5, 20)
    x = np.array([0.5, 0.5, 0.25, 0.25, 0.75, 0.0, 0.75])
    y = np.array([20.0, 30.0, 25.0, 35.0, 10.0, 60.0, 12.0])
    front_x, front_y = pareto_front(x, y)
    assert front_x == [0.75, 0.5, 0.25, 0.0] and front_y == [12.0, 30.0, 35.0, 60.0]
    for fx, fy in zip(front_x, front_y, strict=True):  # nothing at least as sparse is better
        assert not np.any((x >= fx) & (y > fy))


def _figure(title: str) -> bytes:
    import matplotlib.pyplot as plt

    from vditscope.report.figures import figure_png

    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.plot([0, 1], [1, 0])
    ax.set_title(title)
    return figure_png(fig)


def test_figure_files_writes_each_page_figure_as_png_and_svg(tmp_path) -> None:
    from vditscope.report.figure_files import Figure, figure_files
    from vditscope.report.html import figure_html

    plain = _figure("outside")  # no block open: plain PNG bytes, no SVG rendered
    assert type(plain) is bytes
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "stale.png").write_bytes(b"from an earlier render")
    with figure_files(tmp_path) as collected:
        first = _figure("$x$ <b>")
        assert isinstance(first, Figure) and "<svg" in first.svg
        figure_html(first, "image/png", "Token maps, layer 0 <script>")
        figure_html(_figure("again"), "image/png", "Token maps, layer 0 <script>")  # the same name twice
        figure_html(b"GIF89a", "image/gif", "p0")  # a video is not a figure
        with figure_files(tmp_path / "elsewhere"):  # an inner block adds to the outer one
            figure_html(_figure("inner"), "image/png", "../../etc/passwd")
    assert list(collected) == ["token-maps-layer-0-script", "token-maps-layer-0-script-2", "etc-passwd"]
    names = sorted(p.name for p in (tmp_path / "figures").iterdir())
    assert names == sorted(f"{stem}.{ext}" for stem in collected for ext in ("png", "svg"))  # stale.png gone
    assert (tmp_path / "figures" / "token-maps-layer-0-script.png").read_bytes() == bytes(first)
    assert not (tmp_path / "elsewhere").exists()


def test_figure_files_writes_nothing_after_an_error_and_never_replaces_a_file(tmp_path) -> None:
    import pytest

    from vditscope.report.figure_files import figure_files
    from vditscope.report.html import figure_html

    with pytest.raises(RuntimeError), figure_files(tmp_path):
        figure_html(_figure("a"), "image/png", "a")
        raise RuntimeError("the report failed")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "figures").write_text("a file of yours")
    with pytest.raises(OSError), figure_files(tmp_path):
        figure_html(_figure("a"), "image/png", "a")
    assert (tmp_path / "figures").read_text() == "a file of yours"
    assert [p.name for p in tmp_path.iterdir()] == ["figures"]  # no staging folder left behind


def test_temperature_lines_never_average_across_layer_sets() -> None:
    import pandas as pd

    from vditscope.report.figures import temperature_lines

    rows = [
        {"method": "bottom-k", "layers": layers, "k": k, "temperature": tau, "psnr": psnr}
        for layers, base in (("all", 20.0), ("2", 40.0))
        for k in (0.5, 0.9)
        for tau, psnr in ((0.5, base), (1.0, base + 5))
    ]
    lines = temperature_lines(pd.DataFrame(rows))
    assert sorted(lines) == ["layers 2, k = 0.5", "layers 2, k = 0.9", "layers all, k = 0.5", "layers all, k = 0.9"]
    assert list(lines["layers all, k = 0.5"]) == [20.0, 25.0] and list(lines["layers 2, k = 0.9"]) == [40.0, 45.0]


def test_sink_consistency_draws_no_panel_for_a_model_with_nothing_to_compare() -> None:
    import pandas as pd

    from vditscope.report.sink_figures import consistency_bars

    text = pd.DataFrame({"layer": [0, 1], "steps_overlap": [np.nan] * 2, "prompts_overlap": [np.nan] * 2})
    video = pd.DataFrame({"layer": [0, 1], "steps_overlap": [0.6, 0.7], "prompts_overlap": [0.2, np.nan]})
    assert consistency_bars({"lm (llama, text)": text}) is None  # one text: no steps, no second text
    assert consistency_bars({"video": video, "lm (llama, text)": text}) is not None


def test_svg_head_choices_name_the_heads_a_cell_edited() -> None:
    import pandas as pd

    from vditscope.analyses.sweep_tables import head_masks, svg_head_choices

    edits = pd.DataFrame(
        {"layer": [1, 1, 1, 3], "head": [0, 2, 2, 1], "mask": ["spatial", "temporal", "temporal", "spatial"]}
    )
    assert head_masks(edits) == "1:s-t;3:-s"  # head 1 of layer 1 and head 0 of layer 3 were not edited
    table = svg_head_choices(pd.DataFrame({"head_masks": [head_masks(edits), "1:t-t", "<b>x</b>"]}))
    assert list(table.columns) == ["layer", "head 0", "head 1", "head 2"]
    assert table.iloc[0]["head 2"] == "temporal (100%)" and table.iloc[0]["head 0"] in (
        "spatial (50%)",
        "temporal (50%)",
    )
    assert table.iloc[1]["head 1"] == "spatial (100%)" and pd.isna(table.iloc[1]["head 0"])
