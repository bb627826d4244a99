"""The attention explorer's pure parts: tile -> token -> pixel mapping (odd grids included), the quantization's
error bound, the size plan, and the escaping of the embedded JSON block."""

from __future__ import annotations

import base64
import itertools
import json
import re

import numpy as np
import pytest
import torch

from vditscope.layout import TokenLayout
from vditscope.report.explorer import (
    EXPLORER_JS,
    MEAN,
    TileGrid,
    cell_of,
    cell_span,
    dequantize_rows,
    explorer_data,
    explorer_section,
    frame_stride,
    plan_entries,
    quantize_rows,
    query_tile,
    script_json,
    tile_regions,
    video_uint8,
)

HOSTILE = "</script><script>alert(1)</script><!-- & \u2028 </SCRIPT >"
ODD_GRIDS = [(3, 5, 7), (1, 1, 1), (2, 3, 1), (5, 4, 4), (9, 8, 8)]


@pytest.mark.parametrize(("grid", "max_tiles"), itertools.product(ODD_GRIDS, (1, 2, 7, 64, 256, 1000)))
def test_tiling_is_the_layouts_and_tiles_cover_every_token_once(grid: tuple[int, int, int], max_tiles: int) -> None:
    size, tiles = TokenLayout(*grid).tiles(max_tiles)
    tiling = TileGrid.for_tiles(grid, tiles)
    assert tiling is not None and (tiling.size, tiling.tiles) == (size, tiles)
    covered = [token for tile in range(tiles) for token in tiling.tile_tokens(tile)]
    assert covered == list(range(tiling.tokens))
    for token in covered:
        assert tiling.token(*tiling.position(token)) == token
    with pytest.raises(IndexError):
        tiling.tile_tokens(tiles)


def test_a_tile_count_no_tiling_yields_is_refused() -> None:
    # 10 tokens: tiles of 4 give 3 tiles, of 5 give 2; no size gives 4 tiles... except size 3 (4 tiles)
    assert TileGrid.for_tiles((10, 1, 1), 4) == TileGrid(10, 1, 1, 3)
    assert TileGrid.for_tiles((10, 1, 1), 6) is None  # sizes 2 -> 5 tiles, 1 -> 10 tiles
    assert TileGrid.for_tiles((0, 1, 1), 1) is None


@pytest.mark.parametrize(("cells", "pixels"), [(5, 17), (9, 17), (7, 23), (8, 32), (3, 3), (5, 3), (1, 4), (4, 1)])
def test_cell_spans_partition_the_pixels_as_cell_of_assigns_them(cells: int, pixels: int) -> None:
    spans = [cell_span(cell, cells, pixels) for cell in range(cells)]
    assert [p for span in spans for p in span] == list(range(pixels))
    for cell, span in enumerate(spans):
        assert all(cell_of(p, cells, pixels) == cell for p in span)


def test_decoded_frames_map_to_latent_frames_proportionally() -> None:
    # Wan's tiny model: 17 decoded frames for 9 latent frames
    latent = [cell_of(f, 9, 17) for f in range(17)]
    assert latent[0] == 0 and latent[-1] == 8 and latent == sorted(latent)
    assert set(latent) == set(range(9)) and max(latent.count(k) for k in range(9)) == 2


@pytest.mark.parametrize(
    ("grid", "max_tiles", "video"),
    [((3, 5, 7), 11, (7, 23, 31)), ((2, 3, 1), 4, (5, 3, 4)), ((5, 4, 4), 64, (17, 32, 32)), ((4, 3, 5), 9, (2, 7, 9))],
)
def test_tile_regions_and_clicks_agree_on_every_pixel(
    grid: tuple[int, int, int], max_tiles: int, video: tuple[int, int, int]
) -> None:
    """Every pixel of every decoded frame lies in exactly one tile's region, the tile a click there picks."""
    tiling = TileGrid.for_tiles(grid, TokenLayout(*grid).tiles(max_tiles)[1])
    assert tiling is not None
    frames, height, width = video
    owner = np.full(video, -1)
    for tile in range(tiling.tiles):
        for frame, boxes in tile_regions(tiling, tile, frames, height, width).items():
            for y0, y1, x0, x1 in boxes:
                assert (owner[frame, y0:y1, x0:x1] == -1).all(), "two tiles claim a pixel"
                owner[frame, y0:y1, x0:x1] = tile
    shown = {cell_of(f, tiling.frames, frames) for f in range(frames)}
    if len(shown) == tiling.frames:  # every latent frame is shown: every pixel has a tile
        assert (owner >= 0).all()
    for f, y, x in itertools.product(range(frames), range(height), range(width)):
        assert owner[f, y, x] == query_tile(tiling, f, y, x, frames, height, width)


def test_a_tile_spanning_rows_and_frames_has_a_box_per_token() -> None:
    tiling = TileGrid(2, 2, 3, 4)  # 12 tokens, 3 tiles; tile 1 = tokens 4..7: (0,1,1) (0,1,2) (1,0,0) (1,0,1)
    regions = tile_regions(tiling, 1, frames=4, height=4, width=6)
    assert regions == {
        0: [(2, 4, 2, 4), (2, 4, 4, 6)],
        1: [(2, 4, 2, 4), (2, 4, 4, 6)],
        2: [(0, 2, 0, 2), (0, 2, 2, 4)],
        3: [(0, 2, 0, 2), (0, 2, 2, 4)],
    }


def test_quantization_error_is_within_a_510th_of_the_row_max() -> None:
    rng = np.random.default_rng(0)
    rows = rng.dirichlet(np.full(50, 0.3), size=(3, 40)) * rng.uniform(1e-6, 10, size=(3, 40, 1))
    rows[0, 0] = 0.0  # a row of zeros
    rows[1, 1, :] = 1e-30  # and one of tiny values
    quantized, scales = quantize_rows(rows)
    assert quantized.dtype == np.uint8 and scales.dtype == np.float32 and scales.shape == rows.shape[:-1]
    error = np.abs(dequantize_rows(quantized, scales) - rows)
    bound = rows.max(-1, keepdims=True) * (1 / 510 + 1e-6)
    assert (error <= bound).all()
    assert (dequantize_rows(quantized, scales)[0, 0] == 0).all()
    assert (quantized.max(-1)[rows.max(-1) > 0] == 255).all()


def test_script_json_cannot_close_the_script_or_open_a_comment() -> None:
    value = {"text": HOSTILE, "list": [HOSTILE, 1.5, None], HOSTILE: "&amp;"}
    text = str(script_json(value))
    assert not set(text) & set("<>&\u2028\u2029")
    assert json.loads(text) == value
    assert "</script" not in text.lower() and "<!--" not in text


def test_the_explorer_code_cannot_close_its_own_script() -> None:
    assert not re.search(r"</script|<!--|<script", EXPLORER_JS, re.IGNORECASE)


def test_plan_keeps_everything_that_fits_and_says_what_it_left_out() -> None:
    gens, steps, layers, heads, tiles = ["p0.s0", "p0.s1", "p1.s0", "p1.s1"], [0, 5], [0, 1, 2], 4, 10
    per = tiles * tiles + 4 * tiles
    chosen, entries, note = plan_entries(gens, steps, layers, heads, tiles, budget=4 * 2 * 3 * 4 * per)
    assert chosen == [0, 1, 2, 3] and len(entries) == 96 and note.startswith("Embedded: every head")
    chosen, entries, note = plan_entries(gens, steps, layers, heads, tiles, budget=4 * 3 * 6 * per)
    assert chosen == [0, 1, 2, 3] and len(entries) == 72 and "head mean" in note and "all 4" in note
    assert {(s, h) for _, s, _, h in entries} == {(0, MEAN), (5, MEAN)} | {(MEAN, h) for h in range(4)}
    chosen, entries, note = plan_entries(gens, steps, layers, heads, tiles, budget=2 * 3 * 6 * per)
    assert chosen == [0, 2] and "first seed of each prompt (2 of 4" in note
    chosen, entries, note = plan_entries(gens, steps, layers, heads, tiles, budget=3 * 6 * per)
    assert chosen == [0] and "first generation only" in note
    chosen, entries, note = plan_entries(gens, steps, layers, heads, tiles, budget=2 * per)
    assert entries == [(0, MEAN, 0, MEAN), (0, MEAN, 1, MEAN)] and "layers 0, 1" in note
    _, entries, note = plan_entries(gens, steps, layers, 1, tiles, budget=10**9)
    assert {h for *_, h in entries} == {MEAN} and "no per-head maps" in note


def test_frames_fit_their_budget() -> None:
    shapes = [(17, 480, 832, 3)] * 4
    stride = frame_stride(shapes, budget=2**20)
    assert sum(s[0] * -(-s[1] // stride) * -(-s[2] // stride) * 3 for s in shapes) <= 2**20
    assert frame_stride(shapes, budget=10**12) == 1
    floats = np.linspace(0, 1, 2 * 4 * 4 * 3).reshape(2, 4, 4, 3)
    assert video_uint8(floats).dtype == np.uint8 and video_uint8(floats)[-1, -1, -1, -1] == 255
    assert video_uint8(floats, 2).shape == (2, 2, 2, 3)
    assert (video_uint8(video_uint8(floats)) == video_uint8(floats)).all()


def _run(grid: tuple[int, int, int], heads: int = 2, steps: tuple[int, ...] = (0, 3), layers: int = 2) -> tuple:
    gen = torch.Generator().manual_seed(0)
    tiles = TokenLayout(*grid).tiles(7)[1]
    maps = {}
    for prompt, seed, step, layer in itertools.product(range(2), (0, 1), steps, range(layers)):
        raw = torch.rand(heads, tiles, tiles, generator=gen) ** 4
        maps[f"token_map.p{prompt}.s{seed}.step{step}.self.layer{layer}"] = (raw / raw.sum(-1, keepdim=True)).half()
    maps["frame_map.p0.s0.self.layer0"] = torch.rand(heads, grid[0], grid[0])
    videos = {f"p{p}.s{s}": np.random.default_rng(p).random((5, 12, 9, 3)) for p in range(2) for s in (0, 1)}
    run = {"layout": {"grid": list(grid)}, "prompts": [HOSTILE, "a blue circle"]}
    return run, maps, videos


def _decoded(data: dict) -> tuple[np.ndarray, np.ndarray]:
    tiles = data["tiles"]
    maps = np.frombuffer(base64.b64decode(data["maps"]), np.uint8).reshape(-1, tiles, tiles)
    scales = np.frombuffer(base64.b64decode(data["scales"]), "<f4").reshape(-1, tiles)
    return maps, scales


@pytest.mark.parametrize("budget", [10**9, 2**13])
def test_embedded_maps_decode_to_the_stored_ones(budget: int) -> None:
    run, maps, videos = _run((3, 5, 7))
    data = explorer_data(run, maps, videos, budget=budget)
    assert data is not None and data["grid"] == [3, 5, 7] and data["heads"] == 2 and data["steps"] == [0, 3]
    quantized, scales = _decoded(data)
    assert len(quantized) == len(data["entries"]) and len(data["videos"]) == len(data["generations"])
    for (g, step, layer, head), q, s in zip(data["entries"], quantized, scales, strict=True):
        prefix = f"token_map.{data['generations'][g]}"
        chosen = [0, 3] if step == MEAN else [step]
        stack = torch.stack([maps[f"{prefix}.step{k}.self.layer{layer}"].float() for k in chosen]).mean(0).double()
        expected = (stack.mean(0) if head == MEAN else stack[head]).numpy()
        bound = expected.max(-1, keepdims=True) * (1 / 510 + 1e-6)
        assert (np.abs(dequantize_rows(q, s) - expected) <= bound).all()
    clip = np.frombuffer(base64.b64decode(data["videos"][0]["rgb"]), np.uint8).reshape(5, 12, 9, 3)
    assert (clip == video_uint8(videos[data["generations"][0]])).all()


def test_runs_without_a_grid_or_token_maps_get_no_explorer() -> None:
    run, maps, videos = _run((3, 5, 7))
    assert explorer_section({**run, "layout": {"grid": None}}, maps, videos) == []
    assert explorer_section(run, {k: v for k, v in maps.items() if "token_map" not in k}, videos) == []
    assert explorer_section({**run, "layout": {"grid": [2, 5, 1]}}, maps, videos) == []  # no 7 tiles of 10 tokens


def test_the_section_escapes_prompts_and_embeds_safe_json() -> None:
    run, maps, videos = _run((3, 5, 7))
    html = "\n".join(explorer_section(run, maps, videos))
    blocks = re.findall(
        r"<script type='application/json' id='vx-data'>(.*?)</script>\s*<script>(.*?)</script>", html, re.S
    )
    assert len(blocks) == 1 and blocks[0][1] == EXPLORER_JS
    assert not set(blocks[0][0]) & set("<>&") and json.loads(blocks[0][0])["generations"]
    rest = html.replace(blocks[0][0], "").replace(EXPLORER_JS, "")
    assert rest.count("<script") == 2 and "<!--" not in rest
    assert "p0.s0: &lt;/script&gt;&lt;script&gt;alert(1)" in rest
