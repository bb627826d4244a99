"""The attention explorer of the analyze report: click a position in a generated video and see, on every frame,
where that position's query tile attends, per layer, head and step.

Built from the tile-pooled token maps the run already stores (``token_map.*``: (heads, T, T), row = query tile,
column = key tile, the video tokens cut frame-major in sequence order into T tiles of equal size, as
``TokenLayout.tiles`` cuts them). The maps are embedded 8-bit quantized per query row, with the row's scale, in a
``<script type="application/json">`` block whose text holds no ``<``, ``>`` or ``&`` (see ``script_json``), so no
value of the run can close the script or open a comment. The page's own code is the constant ``EXPLORER_JS``.
Positions map proportionally: token rows and columns to pixel rows and columns, and decoded frames to latent
frames (the VAE compresses time, so a video has more decoded frames than latent ones).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from markupsafe import Markup, escape

from ..layout import TokenLayout
from ..store.map_names import MapName, parse_map_name

MAP_BUDGET = 4 * 2**20  # bytes of quantized token maps (with their scales) one report embeds at most
FRAME_BUDGET = 2**20  # bytes of video frames (RGB, 8 bit) one report embeds at most
TEXT_BUDGET = 2**20  # bytes of quantized text tile maps (the cross-attention view) one report embeds at most
MEAN = -1  # an entry's step or head that is the mean over the stored steps or heads
Entry = tuple[int, int, int, int]  # (generation index, step or MEAN, layer, head or MEAN)


@dataclass(frozen=True)
class TileGrid:
    """Video tokens (latent frames x rows x columns, frame-major) cut in sequence order into ``tiles`` tiles of
    ``size`` tokens (the last one may be shorter): the tiling of the stored token maps."""

    frames: int
    rows: int
    cols: int
    size: int

    @classmethod
    def for_tiles(cls, grid: tuple[int, int, int] | list[int], tiles: int) -> TileGrid | None:
        """The tiling that yields ``tiles`` tiles on this grid (TokenLayout.tiles), or None when none does."""
        frames, rows, cols = (int(n) for n in grid)
        if min(frames, rows, cols) < 1 or tiles < 1:
            return None
        size, count = TokenLayout(frames, rows, cols).tiles(tiles)
        return cls(frames, rows, cols, size) if count == tiles else None

    @property
    def tokens(self) -> int:
        return self.frames * self.rows * self.cols

    @property
    def tiles(self) -> int:
        return -(-self.tokens // self.size)

    def tile_tokens(self, tile: int) -> range:
        """The video tokens (sequence positions among the video tokens) of one tile."""
        if not 0 <= tile < self.tiles:
            raise IndexError(f"tile {tile} is not in 0..{self.tiles - 1}")
        return range(tile * self.size, min(self.tokens, (tile + 1) * self.size))

    def position(self, token: int) -> tuple[int, int, int]:
        """(latent frame, row, column) of a video token."""
        frame, rest = divmod(token, self.rows * self.cols)
        return frame, *divmod(rest, self.cols)

    def token(self, frame: int, row: int, col: int) -> int:
        return (frame * self.rows + row) * self.cols + col


def cell_of(pixel: int, cells: int, pixels: int) -> int:
    """The cell (token row, column, or latent frame) that a pixel row, column or decoded frame falls in, when
    ``pixels`` of them are spread proportionally over ``cells`` (the explorer's JavaScript does the same)."""
    return min(cells - 1, pixel * cells // pixels)


def cell_span(cell: int, cells: int, pixels: int) -> range:
    """The pixels (or decoded frames) that ``cell_of`` puts in one cell; empty when there are fewer pixels."""
    return range(-(-cell * pixels // cells), -(-(cell + 1) * pixels // cells) if cell < cells - 1 else pixels)


def tile_regions(grid: TileGrid, tile: int, frames: int, height: int, width: int) -> dict[int, list[tuple[int, ...]]]:
    """Where a tile is in a decoded video of ``frames`` x ``height`` x ``width``: per decoded frame, the pixel
    boxes (y0, y1, x0, x1), half-open, of the tile's tokens in that frame's latent frame."""
    regions: dict[int, list[tuple[int, ...]]] = {}
    for token in grid.tile_tokens(tile):
        latent, row, col = grid.position(token)
        ys, xs = cell_span(row, grid.rows, height), cell_span(col, grid.cols, width)
        if not ys or not xs:
            continue
        for frame in cell_span(latent, grid.frames, frames):
            regions.setdefault(frame, []).append((ys.start, ys.stop, xs.start, xs.stop))
    return regions


def query_tile(grid: TileGrid, frame: int, y: int, x: int, frames: int, height: int, width: int) -> int:
    """The tile of the token under pixel (y, x) of decoded frame ``frame``: what a click on the video picks."""
    token = grid.token(cell_of(frame, grid.frames, frames), cell_of(y, grid.rows, height), cell_of(x, grid.cols, width))
    return token // grid.size


def quantize_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative values (..., T) as uint8 per row with the row's largest value as its scale: value ~ q * scale
    / 255, off by at most scale / 510 (plus float32 rounding of the scale)."""
    values = np.clip(np.asarray(rows, dtype=np.float64), 0, None)
    scales = values.max(axis=-1, keepdims=True)
    safe = np.where(scales > 0, scales, 1.0)
    quantized = np.rint(values / safe * 255).astype(np.uint8)
    return quantized, scales[..., 0].astype(np.float32)


def dequantize_rows(quantized: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The values ``quantize_rows`` encoded (float64), as the page decodes them."""
    return quantized.astype(np.float64) * (scales.astype(np.float64)[..., None] / 255)


def script_json(value: Any) -> Markup:
    """JSON for a ``<script type="application/json">`` block: ``<``, ``>`` and ``&`` (and the JavaScript line
    separators) written as \\u escapes, so no string in it can end the script or start a comment."""
    text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    for char in "<>&\u2028\u2029":
        text = text.replace(char, f"\\u{ord(char):04x}")
    return Markup(text)


def video_uint8(frames: np.ndarray, stride: int = 1) -> np.ndarray:
    """Frames (F, H, W, 3), float in [0, 1] or uint8, as uint8 taking every ``stride``-th pixel."""
    frames = np.asarray(frames)[:, ::stride, ::stride]
    if frames.dtype != np.uint8:
        frames = np.rint(np.clip(frames.astype(np.float32), 0, 1) * 255).astype(np.uint8)
    return np.ascontiguousarray(frames)


def frame_stride(shapes: list[tuple[int, ...]], budget: int = FRAME_BUDGET) -> int:
    """The smallest pixel stride that fits the videos (F, H, W, 3) into ``budget`` bytes (1 pixel wide at worst)."""
    largest = max((max(shape[1], shape[2]) for shape in shapes), default=1)
    for stride in range(1, largest + 1):
        size = sum(s[0] * -(-s[1] // stride) * -(-s[2] // stride) * 3 for s in shapes)
        if size <= budget:
            return stride
    return largest


def plan_entries(
    generations: list[str], steps: list[int], layers: list[int], heads: int, tiles: int, budget: int = MAP_BUDGET
) -> tuple[list[int], list[Entry], str]:
    """The fullest set of maps that fits ``budget`` bytes: the generations (indices) it covers, the entries, and a
    sentence for the page saying what was left out. Tried in order: every head at every step; per-step maps as
    the head mean with per-head maps as the step mean; that for the first seed of each prompt; for the first
    generation; the first generation's head-and-step mean, for as many layers as fit."""
    per_entry = tiles * tiles + 4 * tiles
    head_ids = list(range(heads)) if heads > 1 else [MEAN]
    step_ids = steps or [MEAN]

    def full(g: int) -> list[Entry]:
        return [(g, s, layer, h) for layer in layers for s in step_ids for h in head_ids]

    def means(g: int) -> list[Entry]:
        if heads <= 1 or len(step_ids) <= 1:
            return full(g)
        per_step = [(g, s, layer, MEAN) for layer in layers for s in step_ids]
        return per_step + [(g, MEAN, layer, h) for layer in layers for h in head_ids]

    first_seeds = sorted({name.split(".")[0]: i for i, name in reversed(list(enumerate(generations)))}.values())
    n = len(generations)
    split = "per-step maps as the head mean and per-head maps as the step mean"
    whole = "every head at every stored step" if heads > 1 else "the head mean (the run stores no per-head maps)"
    levels: list[tuple[list[int], Callable[[int], list[Entry]], str]] = [
        (list(range(n)), full, f"{whole}, for all {n} generations"),
        (list(range(n)), means, f"{split}, for all {n} generations"),
        (first_seeds, means, f"{split}, for the first seed of each prompt ({len(first_seeds)} of {n} generations)"),
        ([0], means, f"{split}, for the first generation only (of {n})"),
    ]
    for chosen, make, text in levels:
        entries = [entry for g in chosen for entry in make(g)]
        if len(entries) * per_entry <= budget:
            everything = chosen == levels[0][0] and make is full
            prefix = "Embedded: " if everything else f"To stay within the report's {budget / 2**20:g} MiB budget: "
            return chosen, entries, prefix + text + "."
    kept = layers[: max(1, budget // per_entry)]
    note = f"the head and step mean of the first generation only, for layers {', '.join(map(str, kept))}"
    return [0], [(0, MEAN, layer, MEAN) for layer in kept], f"To stay within the report's size budget: {note}."


def stored_token_maps(maps: dict[str, torch.Tensor], generations: list[str]) -> dict[tuple[str, int], dict]:
    """The self-attention token maps of the given generations: (generation, layer) -> {step or MEAN: (H, T, T)}.
    Per-step maps are used where a layer has them; a map without a step (a step mean) only otherwise."""
    found: dict[tuple[str, int], dict] = {}
    for name, tensor in maps.items():
        parsed: MapName | None = parse_map_name(name)
        if parsed is None or parsed.key != "token_map" or parsed.kind != "self":
            continue
        if parsed.generation in generations and tensor.ndim == 3:
            step = MEAN if parsed.step is None else parsed.step
            found.setdefault((parsed.generation, parsed.layer), {})[step] = tensor
    for steps in found.values():
        if len(steps) > 1:
            steps.pop(MEAN, None)
    return found


def entry_values(stored: dict, entry: Entry) -> np.ndarray:
    """One entry's (T, T) float32 map: a stored step's map (or the mean over steps) of one head (or the mean)."""
    _, step, _, head = entry
    chosen = list(stored.values()) if step == MEAN else [stored[step]]
    stack = torch.stack([t.to(torch.float32) for t in chosen]).mean(0)
    return (stack.mean(0) if head == MEAN else stack[head]).numpy()


def explorer_data(
    run: dict[str, Any], maps: dict[str, torch.Tensor], videos: dict[str, np.ndarray], budget: int = MAP_BUDGET
) -> dict | None:
    """The explorer's embedded data (JSON-ready; at most ``budget`` bytes of maps before base64) and its page note,
    or None when the run has nothing to show (no video grid, no self-attention token maps, videos of another shape)."""
    grid_shape = (run.get("layout") or {}).get("grid")
    names = [name for name, frames in videos.items() if np.ndim(frames) == 4 and np.shape(frames)[-1] == 3]
    stored = stored_token_maps(maps, names)
    generations = [name for name in names if any(key[0] == name for key in stored)]
    if not grid_shape or not generations:
        return None
    first = next(iter(next(iter(stored.values())).values()))
    heads, tiles = int(first.shape[0]), int(first.shape[-1])
    grid = TileGrid.for_tiles(grid_shape, tiles)
    if grid is None or any(t.shape != first.shape for steps in stored.values() for t in steps.values()):
        return None
    layers = sorted({layer for _, layer in stored})
    steps = sorted({s for per in stored.values() for s in per if s != MEAN})
    chosen, entries, note = plan_entries(generations, steps, layers, heads, tiles, budget)
    entries = [e for e in entries if (generations[e[0]], e[2]) in stored]
    entries = [e for e in entries if e[1] == MEAN or e[1] in stored[(generations[e[0]], e[2])]]
    if not entries:
        return None
    index = {g: i for i, g in enumerate(chosen)}
    encoded = embedded_rows([entry_values(stored[(generations[e[0]], e[2])], e) for e in entries])
    clips = [video_uint8(videos[generations[g]]) for g in chosen]
    stride = frame_stride([clip.shape for clip in clips])
    clips = [clip[:, ::stride, ::stride] for clip in clips] if stride > 1 else clips
    names = [generations[g] for g in chosen]
    text = text_data(maps, names, grid.tiles, [_prompt_labels(run, name) for name in names])
    return {
        "text": text,
        "grid": [grid.frames, grid.rows, grid.cols],
        "tiles": grid.tiles,
        "tile_size": grid.size,
        "heads": heads if heads > 1 else 0,
        "steps": steps,
        "layers": layers,
        "generations": names,
        "entries": [[index[g], s, layer, h] for g, s, layer, h in entries],
        **encoded,
        "videos": [
            {"frames": c.shape[0], "height": c.shape[1], "width": c.shape[2], "rgb": _b64(np.ascontiguousarray(c))}
            for c in clips
        ],
        "note": note,
        "stride": stride,
    }


def stored_text_maps(maps: dict[str, torch.Tensor], generations: list[str]) -> dict[tuple[str, int], torch.Tensor]:
    """The text tile maps (cross-attention, or joint attention's text keys) of the given generations:
    (generation, layer) -> (H, T, L), the mass each query tile puts on each text key."""
    found = {}
    for name, tensor in maps.items():
        parsed = parse_map_name(name)
        if parsed is None or parsed.key != "text_tile_map" or parsed.step is not None or tensor.ndim != 3:
            continue
        if parsed.generation in generations:
            found[(parsed.generation, parsed.layer)] = tensor
    return found


def text_data(
    maps: dict[str, torch.Tensor],
    generations: list[str],
    tiles: int,
    labels: list[list[str]],
    budget: int = TEXT_BUDGET,
) -> dict | None:
    """The explorer's cross-attention data for ``generations`` (the explorer's own): per generation and layer
    the head mean, and every head while they fit ``budget`` bytes; None when the run stores no text tile maps
    of this tiling."""
    stored = stored_text_maps(maps, generations)
    if not stored or any(t.shape[1] != tiles for t in stored.values()):
        return None
    keys = int(next(iter(stored.values())).shape[-1])
    heads = int(next(iter(stored.values())).shape[0])
    present = [(g, layer) for g, name in enumerate(generations) for layer in sorted({lay for _, lay in stored})
               if (name, layer) in stored]  # fmt: skip
    per_entry = tiles * keys + 4 * tiles
    head_ids = [MEAN] + (list(range(heads)) if heads > 1 else [])
    if len(present) * len(head_ids) * per_entry > budget:
        head_ids = [MEAN]
    entries = [(g, layer, h) for g, layer in present for h in head_ids][: max(1, budget // per_entry)]
    rows = []
    for g, layer, h in entries:
        values = stored[(generations[g], layer)].to(torch.float32)
        rows.append((values.mean(0) if h == MEAN else values[h]).numpy())
    return {
        "keys": keys,
        "entries": [list(e) for e in entries],
        **embedded_rows(rows),
        "labels": [[(names[i] if i < len(names) else f"text {i}") for i in range(keys)] for names in labels],
        "per_head": len(head_ids) > 1,
    }


def _prompt_labels(run: dict[str, Any], generation: str) -> list[str]:
    """The text-token labels of a generation's prompt as run.json stores them ([] when it has none)."""
    labels = run.get("text_token_labels") or {}
    return [str(t) for t in labels.get(generation.split(".")[0][1:], [])]


def embedded_rows(matrices: list[np.ndarray]) -> dict[str, str]:
    """Matrices as the page decodes them: every row 8-bit quantized (``quantize_rows``), the rows of all
    matrices concatenated in ``maps`` and their scales (float32, little-endian) in ``scales``, base64."""
    encoded = [quantize_rows(matrix) for matrix in matrices]
    return {
        "scales": _b64(np.concatenate([s for _, s in encoded]).astype("<f4").tobytes()),
        "maps": _b64(np.concatenate([q.ravel() for q, _ in encoded]).tobytes()),
    }


def _b64(data: bytes | np.ndarray) -> str:
    return base64.b64encode(bytes(data)).decode("ascii")


def _options(pairs: list[tuple[int, str]]) -> Markup:
    return Markup("").join(Markup("<option value='{}'>{}</option>").format(value, text) for value, text in pairs)


def explorer_section(run: dict[str, Any], maps: dict[str, torch.Tensor], videos: dict[str, np.ndarray]) -> list[Markup]:
    """The report section: a heading, what the view shows, the controls, the canvases, the data and the code."""
    data = explorer_data(run, maps, videos)
    if data is None:
        return []
    prompts = run.get("prompts") or []
    labels = []
    for i, name in enumerate(data["generations"]):
        prompt_index = int(name.split(".")[0][1:])
        prompt = prompts[prompt_index] if 0 <= prompt_index < len(prompts) else ""
        labels.append((i, f"{name}: {prompt}"))
    heads = [(MEAN, "mean")] + [(h, str(h)) for h in range(data["heads"])]
    steps = [(MEAN, "mean of the stored steps")] + [(s, str(s)) for s in data["steps"]]
    controls = Markup(
        "<p style='display:flex;flex-wrap:wrap;gap:.4em 1.2em'><label>prompt, seed <select id='vx-gen'>{}</select>"
        "</label><label>layer <select id='vx-layer'>{}</select></label><label>head <select id='vx-head'>{}</select>"
        "</label><label>step <select id='vx-step'>{}</select></label>{}</p>"
    ).format(
        _options(labels),
        _options([(layer, str(layer)) for layer in data["layers"]]),
        _options(heads),
        _options(steps),
        _text_control(data),
    )
    view = Markup(
        "<div id='vx' tabindex='0' style='outline:none'>{}<div style='display:flex;gap:1em;align-items:flex-start'>"
        "<canvas id='vx-main' width='{}' height='{}' style='cursor:crosshair;max-width:60%'></canvas>"
        "<div><p id='vx-info' style='font-size:.85em;margin:0'></p><div style='width:240px;height:10px;margin-top:.5em;"
        "background:linear-gradient(to right,#000004,#57106e,#bc3754,#f98e09,#fcffa4)'></div>"
        "<p style='font-size:.8em;margin:0;width:240px;display:flex;justify-content:space-between'><b>0</b>"
        "<b id='vx-top'></b></p></div></div>"
        "<div id='vx-strip' style='display:flex;flex-wrap:wrap;gap:4px;margin-top:.5em'></div></div>"
    ).format(controls, data["videos"][0]["width"], data["videos"][0]["height"])
    code = Markup("<script type='application/json' id='vx-data'>{}</script>\n<script>{}</script>").format(
        script_json(data), Markup(EXPLORER_JS)
    )
    return [Markup("<h2>Attention explorer: where a position looks</h2>"), _explanation(data), view, code]


def _text_control(data: dict) -> Markup:
    """The text-token choice of the cross-attention view (nothing when the run stores no text tile maps)."""
    text = data.get("text")
    if not text:
        return Markup()
    tokens = [(MEAN, "none: where the clicked position looks")]
    tokens += [(i, f"{i}: {label}") for i, label in enumerate(text["labels"][0])]
    return Markup("<label>looked at from: text token <select id='vx-text'>{}</select></label>").format(_options(tokens))


def _explanation(data: dict) -> Markup:
    frames, rows, cols = data["grid"]
    video = data["videos"][0]
    stride = f" (every {data['stride']}th pixel, to fit the report)" if data["stride"] > 1 else ""
    text = (
        "Click a position in the video (the large frame or any thumbnail) to pick the query tile that holds it: "
        "every frame then shows, as a heatmap, the attention that tile's queries give each video token (a row of the "
        "stored tile-pooled token map: the mean over the tile's queries of the mass on each key tile, divided by the "
        "key tile's token count). Choose the layer, head and step above; with the explorer focused (click it), the "
        "left and right arrow keys step through the frames. "
        f"The video tokens, {frames} latent frames x {rows} rows x {cols} columns, are cut in sequence order "
        f"(frame, row, column) into {data['tiles']} tiles of {data['tile_size']} tokens, so a tile can span several "
        f"rows; its tokens are outlined. The video has {video['frames']} decoded frames{stride} for {frames} latent "
        f"frames (the VAE compresses time): decoded frame f is shown with latent frame floor(f x {frames} / "
        f"{video['frames']}), a proportional mapping, not the VAE's exact one; token rows and columns map to pixel "
        "rows and columns proportionally too. Colour runs from 0 to the largest per-token mass over all frames. Maps "
        "are 8-bit per query row (error at most 1/510 of the row's largest value); the step mean is the mean over "
        f"the stored map steps. {data['note']} "
    )
    if data.get("text"):
        heads = "every head and the head mean" if data["text"]["per_head"] else "the head mean"
        text += (
            "Choose a text token under 'looked at from' to see the cross-attention instead: every frame shows, per "
            "video token, the mass its query tile puts on that text token (the mean over the tile's queries, averaged "
            f"over the stored map steps; {heads}). Choose 'none' to go back to the clicked position's attention."
        )
    else:
        text += "This run stores no per-position text attention (see Text attention for the mass each token gets)."
    return Markup("<p>{}</p>").format(escape(text))


EXPLORER_JS = """
(function () {
  "use strict";
  var root = document.getElementById("vx");
  var data = JSON.parse(document.getElementById("vx-data").textContent);
  var LF = data.grid[0], R = data.grid[1], C = data.grid[2], N = LF * R * C, T = data.tiles, SIZE = data.tile_size;
  function decode(b64) {
    var s = atob(b64), out = new Uint8Array(s.length);
    for (var i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out;
  }
  var q8 = decode(data.maps), scales = new Float32Array(decode(data.scales).buffer), index = {};
  data.entries.forEach(function (e, i) { index[e.join(",")] = i; });
  var videos = data.videos.map(function (v) {
    return {frames: v.frames, h: v.height, w: v.width, rgb: decode(v.rgb)};
  });
  var TX = data.text, tq8 = null, tscales = null, tindex = {};
  if (TX) {
    tq8 = decode(TX.maps);
    tscales = new Float32Array(decode(TX.scales).buffer);
    TX.entries.forEach(function (e, i) { tindex[e.join(",")] = i; });
  }
  var sel = {};
  ["gen", "layer", "head", "step", "text"].forEach(function (k) { sel[k] = document.getElementById("vx-" + k); });
  var main = document.getElementById("vx-main"), info = document.getElementById("vx-info");
  var strip = document.getElementById("vx-strip"), work = document.createElement("canvas");
  var wctx = work.getContext("2d"), thumbs = [], shownGen = -1;
  var state = {query: null, frame: 0, row: null, col: null};
  var STOPS = [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], LUT = [];
  for (var i = 0; i < 256; i++) {
    var x = i / 255 * (STOPS.length - 1), k = Math.min(STOPS.length - 2, Math.floor(x)), f = x - k;
    LUT.push([0, 1, 2].map(function (c) { return STOPS[k][c] + f * (STOPS[k + 1][c] - STOPS[k][c]); }));
  }
  function cellOf(p, cells, pixels) { return Math.min(cells - 1, Math.floor(p * cells / pixels)); }
  function stored(g, s, l, h, q) {
    var i = index[[g, s, l, h].join(",")];
    if (i === undefined) return null;
    var row = new Float64Array(T), base = (i * T + q) * T, scale = scales[i * T + q] / 255;
    for (var k = 0; k < T; k++) row[k] = q8[base + k] * scale;
    return row;
  }
  function mean(rows) {
    if (!rows.length || rows.some(function (r) { return r === null; })) return null;
    var out = new Float64Array(T);
    rows.forEach(function (r) { for (var k = 0; k < T; k++) out[k] += r[k] / rows.length; });
    return out;
  }
  function rowOf(g, s, l, h, q) {  // an embedded row, else the mean of finer embedded ones
    var row = stored(g, s, l, h, q), k, heads = [];
    if (row === null && h === -1 && data.heads > 1) {
      for (k = 0; k < data.heads; k++) heads.push(k);
      row = mean(heads.map(function (k) { return rowOf(g, s, l, k, q); }));
    }
    if (row === null && s === -1 && data.steps.length)
      row = mean(data.steps.map(function (k) { return rowOf(g, k, l, h, q); }));
    return row;
  }
  function textColumn(g, l, h, key) {  // the mass each query tile puts on text key ``key``
    var i = tindex[[g, l, h].join(",")];
    if (i === undefined) return null;
    var col = new Float64Array(T);
    for (var t = 0; t < T; t++) col[t] = tq8[(i * T + t) * TX.keys + key] * tscales[i * T + t] / 255;
    return col;
  }
  function choice() {
    return {gen: +sel.gen.value, layer: +sel.layer.value, head: +sel.head.value, step: +sel.step.value,
      text: sel.text ? +sel.text.value : -1};
  }
  function heat(text) {
    var tokens = new Float64Array(N), top = 0;
    for (var j = 0; j < N; j++) {
      var t = Math.floor(j / SIZE);
      tokens[j] = text ? state.col[t] : state.row[t] / (Math.min(N, (t + 1) * SIZE) - t * SIZE);
      if (tokens[j] > top) top = tokens[j];
    }
    return {tokens: tokens, top: top};
  }
  function outline(ctx, canvas, v, lf) {
    var sy = canvas.height / v.h, sx = canvas.width / v.w, first = state.query * SIZE;
    ctx.strokeStyle = "#00e5ff";
    ctx.lineWidth = Math.max(1, canvas.width / 160);
    for (var j = first; j < Math.min(N, first + SIZE); j++) {
      if (Math.floor(j / (R * C)) !== lf) continue;
      var r = Math.floor(j / C) % R, c = j % C;
      var y0 = Math.ceil(r * v.h / R), y1 = r === R - 1 ? v.h : Math.ceil((r + 1) * v.h / R);
      var x0 = Math.ceil(c * v.w / C), x1 = c === C - 1 ? v.w : Math.ceil((c + 1) * v.w / C);
      ctx.strokeRect(x0 * sx, y0 * sy, (x1 - x0) * sx, (y1 - y0) * sy);
    }
  }
  function paint(canvas, v, f, hm) {
    var img = wctx.createImageData(v.w, v.h), lf = cellOf(f, LF, v.frames), base = f * v.w * v.h * 3;
    for (var y = 0; y < v.h; y++) {
      var r = cellOf(y, R, v.h);
      for (var x = 0; x < v.w; x++) {
        var p = base + (y * v.w + x) * 3, o = (y * v.w + x) * 4, a = 0, c = LUT[0];
        if (hm && hm.top > 0) {
          var val = hm.tokens[(lf * R + r) * C + cellOf(x, C, v.w)] / hm.top;
          a = 0.35 + 0.55 * val;
          c = LUT[Math.round(val * 255)];
        }
        for (var k = 0; k < 3; k++) img.data[o + k] = (1 - a) * v.rgb[p + k] + a * c[k];
        img.data[o + 3] = 255;
      }
    }
    work.width = v.w;
    work.height = v.h;
    wctx.putImageData(img, 0, 0);
    var ctx = canvas.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(work, 0, 0, canvas.width, canvas.height);
    if (state.query !== null && choice().text < 0) outline(ctx, canvas, v, lf);
  }
  function fit(canvas, v, px) {
    var s = Math.max(v.h, v.w) <= px ? Math.floor(px / Math.max(v.h, v.w)) : px / Math.max(v.h, v.w);
    canvas.width = Math.max(1, Math.round(v.w * s));
    canvas.height = Math.max(1, Math.round(v.h * s));
  }
  function pick(canvas, f, event) {
    var v = videos[choice().gen], box = canvas.getBoundingClientRect();
    var x = Math.min(v.w - 1, Math.max(0, Math.floor((event.clientX - box.left) * v.w / box.width)));
    var y = Math.min(v.h - 1, Math.max(0, Math.floor((event.clientY - box.top) * v.h / box.height)));
    var token = (cellOf(f, LF, v.frames) * R + cellOf(y, R, v.h)) * C + cellOf(x, C, v.w);
    state.query = Math.floor(token / SIZE);
    state.frame = f;
    update();
  }
  function build(g) {
    var v = videos[g];
    while (strip.firstChild) strip.removeChild(strip.firstChild);
    thumbs = [];
    for (var f = 0; f < v.frames; f++) {
      var canvas = document.createElement("canvas");
      canvas.setAttribute("aria-label", "frame " + (f + 1));
      canvas.style.cursor = "crosshair";
      fit(canvas, v, 96);
      canvas.addEventListener("click", pick.bind(null, canvas, f));
      strip.appendChild(canvas);
      thumbs.push(canvas);
    }
    fit(main, v, 384);
    if (TX && sel.text) {  // this prompt's tokens
      for (var k = 1; k < sel.text.options.length; k++)
        sel.text.options[k].textContent = (k - 1) + ": " + TX.labels[g][k - 1];
    }
    state.frame = Math.min(state.frame, v.frames - 1);
    if (state.query === null) state.query = Math.floor(((R >> 1) * C + (C >> 1)) / SIZE);
    shownGen = g;
  }
  function update() {
    var ch = choice(), v = videos[ch.gen];
    if (ch.gen !== shownGen) build(ch.gen);
    state.row = rowOf(ch.gen, ch.step, ch.layer, ch.head, state.query);
    state.col = ch.text >= 0 ? textColumn(ch.gen, ch.layer, ch.head, ch.text) : null;
    var hm = ch.text >= 0 ? (state.col ? heat(true) : null) : (state.row ? heat(false) : null);
    var tokens = [state.query * SIZE, Math.min(N, (state.query + 1) * SIZE) - 1];
    paint(main, v, state.frame, hm);
    thumbs.forEach(function (canvas, f) {
      paint(canvas, v, f, hm);
      canvas.style.outline = f === state.frame ? "2px solid #00e5ff" : "none";
    });
    var where = tokens.map(function (j) {
      return "latent frame " + Math.floor(j / (R * C)) + " row " + (Math.floor(j / C) % R) + " column " + (j % C);
    });
    var frame = "Frame " + (state.frame + 1) + " of " + v.frames + " (latent frame " +
      cellOf(state.frame, LF, v.frames) + "). ";
    if (ch.text >= 0) {
      info.textContent = "Text token " + ch.text + " (" + TX.labels[ch.gen][ch.text] + "), layer " + ch.layer + ": " +
        "the mass each video token's query tile puts on it. " + frame + (hm ? "Colour: 0 to " +
        hm.top.toPrecision(3) + "." : "This head's text attention is not in the report (its size budget): " +
        "choose the head mean.");
    } else {
      info.textContent = "Query tile " + state.query + " of " + T + ": tokens " + tokens[0] + " (" + where[0] +
        ") to " + tokens[1] + " (" + where[1] + "). " + frame + (hm ? "Colour: mass per key token, " +
        "0 to " + hm.top.toPrecision(3) + "." : "This head at this step is not in the report (its size " +
        "budget): choose the head mean or the step mean.");
    }
    document.getElementById("vx-top").textContent = hm ? hm.top.toPrecision(3) : "";
    root.setAttribute("data-query", String(state.query));
    root.setAttribute("data-frame", String(state.frame));
  }
  ["gen", "layer", "head", "step", "text"].forEach(function (k) {
    if (sel[k]) sel[k].addEventListener("change", update);
  });
  main.addEventListener("click", function (event) { pick(main, state.frame, event); });
  root.addEventListener("keydown", function (event) {
    if (event.target.tagName === "SELECT") return;
    var step = event.key === "ArrowRight" ? 1 : event.key === "ArrowLeft" ? -1 : 0;
    if (!step) return;
    event.preventDefault();
    var n = videos[choice().gen].frames;
    state.frame = (state.frame + step + n) % n;
    update();
  });
  window.vditscopeExplorer = {
    state: function () {
      var ch = choice();
      return {generation: data.generations[ch.gen], layer: ch.layer, head: ch.head, step: ch.step,
        query: state.query, frame: state.frame, tiles: T, tileSize: SIZE, text: ch.text};
    },
    row: function () { return state.row ? Array.from(state.row) : null; },
    column: function () { return state.col ? Array.from(state.col) : null; }
  };
  update();
})();
"""
