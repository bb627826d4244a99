"""The HTML report in a real headless browser: it loads without console errors and shows every figure.

Uses Debian's Chromium and ChromeDriver (/usr/bin/chromium, /usr/bin/chromedriver) through selenium, with an
explicit driver path so that selenium-manager never downloads anything. Skipped when any of the three is missing,
unless VDITSCOPE_REQUIRE_BROWSER=1 (set by .ci/run), in which case their absence is an error.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

try:
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # pragma: no cover - depends on the environment
    webdriver = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
REQUIRE_BROWSER = os.environ.get("VDITSCOPE_REQUIRE_BROWSER") == "1"
# what the browser must show loaded: the same media elements the static HTML contains
MEDIA_TAGS = ("img", "svg", "canvas")


def _missing_requirements() -> list[str]:
    """Names of the browser-test requirements that this machine lacks."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not (os.path.isfile(path) and os.access(path, os.X_OK))]
    if webdriver is None:
        missing.append("the selenium package")
    return missing


_MISSING = _missing_requirements()
if _MISSING:
    _REASON = (
        f"browser test needs {', '.join(_MISSING)} (apt-get install chromium chromium-driver; pip install selenium)"
    )
    if REQUIRE_BROWSER:
        pytest.fail(f"VDITSCOPE_REQUIRE_BROWSER=1 but {_REASON}", pytrace=False)
    pytest.skip(_REASON, allow_module_level=True)

pytestmark = pytest.mark.browser


class _TagCounter(HTMLParser):
    """Counts start tags of a static HTML document."""

    def __init__(self) -> None:
        """Start with no tags counted."""
        super().__init__()
        self.counts: Counter[str] = Counter()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        """Count one start tag."""
        self.counts[tag] += 1


def static_counts(html_path: Path) -> Counter[str]:
    """Start-tag counts of an HTML file, parsed without a browser."""
    parser = _TagCounter()
    parser.feed(html_path.read_text(encoding="utf-8"))
    parser.close()
    return parser.counts


# Runs in the page: scrolls each media element into view and describes it, and each <figure>.
_INSPECT_JS = """
const visible = (el) => {
  el.scrollIntoView({block: 'center', inline: 'center'});
  const r = el.getBoundingClientRect();
  const s = getComputedStyle(el);
  const inViewport = r.bottom > 0 && r.right > 0 && r.top < innerHeight && r.left < innerWidth;
  return r.width > 0 && r.height > 0 && inViewport && s.visibility !== 'hidden' && s.display !== 'none'
    && parseFloat(s.opacity) > 0;
};
const loaded = (el) => {
  const tag = el.tagName.toLowerCase();
  if (tag === 'img') return el.complete && el.naturalWidth > 0 && el.naturalHeight > 0;
  if (tag === 'canvas') return el.width > 0 && el.height > 0;
  return true;  // an inline svg has nothing to fetch; its box is checked by visible()
};
const describe = (el) => ({
  tag: el.tagName.toLowerCase(),
  label: el.getAttribute('alt') || el.getAttribute('aria-label') || (el.getAttribute('src') || '').slice(0, 60),
  loaded: loaded(el),
  visible: visible(el),
  naturalWidth: el.naturalWidth === undefined ? null : el.naturalWidth,
});
const media = Array.from(document.querySelectorAll('img, svg, canvas'))
  .filter((el) => !(el.tagName.toLowerCase() === 'svg' && el.parentElement.closest('svg')))
  .map(describe);
const figures = Array.from(document.querySelectorAll('figure')).map((fig, i) => {
  const inner = Array.from(fig.querySelectorAll('img, svg, canvas')).map(describe);
  const caption = fig.querySelector('figcaption');
  return {index: i, caption: caption ? caption.textContent.trim() : '', ok: inner.some((m) => m.loaded && m.visible)};
});
window.scrollTo(0, 0);
return {title: document.title, readyState: document.readyState, media: media, figures: figures};
"""


@dataclass
class PageCheck:
    """What the browser saw of one page, and every problem found in it."""

    title: str
    console: list[dict[str, Any]]
    media: list[dict[str, Any]]
    figures: list[dict[str, Any]]
    problems: list[str] = field(default_factory=list)


def _all_images_settled(driver: WebDriver) -> bool:
    """True once the document is loaded and no <img> is still fetching."""
    return bool(
        driver.execute_script(
            "return document.readyState === 'complete' && Array.from(document.images).every((i) => i.complete);"
        )
    )


def check_page(driver: WebDriver, html_path: Path, timeout: float = 60.0) -> PageCheck:
    """Open an HTML file in the browser and list its problems: console errors, title, unloaded media, empty figures."""
    expected = static_counts(html_path)
    driver.get_log("browser")  # drop what earlier pages logged
    driver.get(html_path.resolve().as_uri())
    stuck: list[str] = []
    try:
        WebDriverWait(driver, timeout).until(_all_images_settled)
    except TimeoutException:
        stuck = driver.execute_script(
            "return Array.from(document.images).filter((i) => !i.complete).map((i) => i.alt || i.src.slice(0, 60));"
        )
    seen = driver.execute_script(_INSPECT_JS)
    console = driver.get_log("browser")
    check = PageCheck(title=seen["title"], console=console, media=seen["media"], figures=seen["figures"])
    if stuck:
        check.problems.append(f"images still loading after {timeout:.0f} s: {stuck}")

    for entry in console:
        if entry.get("level") == "SEVERE":
            check.problems.append(f"console error: {entry.get('message')}")
    if not check.title.strip():
        check.problems.append("page title is empty")
    for index, item in enumerate(check.media):
        if not item["loaded"]:
            check.problems.append(
                f"{item['tag']} #{index} ({item['label']!r}) did not load (naturalWidth={item['naturalWidth']})"
            )
        elif not item["visible"]:
            check.problems.append(f"{item['tag']} #{index} ({item['label']!r}) has no visible box in view")
    for figure in check.figures:
        if not figure["ok"]:
            check.problems.append(
                f"<figure> #{figure['index']} ({figure['caption']!r}) shows no loaded image/svg/canvas"
            )

    shown = Counter(item["tag"] for item in check.media if item["loaded"] and item["visible"])
    for tag in MEDIA_TAGS:
        if shown[tag] < expected[tag]:
            check.problems.append(f"the HTML has {expected[tag]} <{tag}> but the browser shows {shown[tag]} loaded")
    good_figures = sum(1 for figure in check.figures if figure["ok"])
    if good_figures < expected["figure"]:
        check.problems.append(f"the HTML has {expected['figure']} <figure> but {good_figures} show their media")
    return check


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    """Headless Debian Chromium through Debian's ChromeDriver, with a fresh profile and the browser log enabled."""
    profile = tmp_path_factory.mktemp("chromium-profile")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,1024",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    log_path = tmp_path_factory.mktemp("chromedriver") / "chromedriver.log"
    service = Service(executable_path=CHROMEDRIVER, log_output=str(log_path))
    browser = webdriver.Chrome(service=service, options=options)
    browser.set_page_load_timeout(120)
    try:
        yield browser
    finally:
        browser.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def report_html(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """report.html of `vditscope analyze` on the shipped tiny model: 2 prompts x 2 seeds, so every
    section (similarity matrices, token maps, head classes, text attention, sinks, videos) is drawn,
    at a small size that keeps the test fast."""
    from vditscope.analyses.analyze import AnalyzeRequest, run_analyze

    out = tmp_path_factory.mktemp("analyze") / "run"
    started = time.perf_counter()
    request = AnalyzeRequest(
        out=out,
        prompts=["a red square moving left on a black background", "a blue circle moving up on a gray background"],
        seeds=[0, 1],
        num_frames=9,
        num_inference_steps=3,
        height=32,
        width=32,
        map_tiles=64,
    )
    run_dir = run_analyze(request)
    print(f"vditscope analyze took {time.perf_counter() - started:.1f} s")
    return run_dir / "report.html"


def _explain(check: PageCheck) -> str:
    """Problems and console entries of a page, one per line, for an assertion message."""
    lines = [*check.problems, "console:", *(f"  {e.get('level')}: {e.get('message')}" for e in check.console)]
    return "\n".join(lines)


def test_report_loads_without_errors_and_shows_every_figure(driver: WebDriver, report_html: Path) -> None:
    """The analyze report: no console errors, a title, and every image and figure loaded and visible."""
    expected = static_counts(report_html)
    assert sum(expected[tag] for tag in MEDIA_TAGS) > 0, "the report contains no image at all"
    check = check_page(driver, report_html)
    for entry in check.console:
        print(f"console {entry.get('level')}: {entry.get('message')}")
    assert not check.problems, _explain(check)
    assert len(check.media) >= sum(expected[tag] for tag in MEDIA_TAGS)
    assert len(check.figures) == expected["figure"]


BROKEN_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title></title></head><body>
<h1>broken</h1>
<figure><img alt="bad data uri" src="data:image/png;base64,bm90IGEgcG5n"><figcaption>bad image</figcaption></figure>
<figure><figcaption>a figure with nothing in it</figcaption></figure>
<script>throw new Error('x')</script>
</body></html>
"""


def test_checker_fails_a_broken_page(driver: WebDriver, tmp_path: Path) -> None:
    """The same checker reports a script error, an empty title, a broken image and an empty figure."""
    page = tmp_path / "broken.html"
    page.write_text(BROKEN_PAGE, encoding="utf-8")
    check = check_page(driver, page)
    problems = "\n".join(check.problems)
    assert check.problems
    assert "console error" in problems and "Error: x" in problems, problems
    assert "page title is empty" in problems, problems
    assert "'bad data uri') did not load" in problems, problems
    assert "'a figure with nothing in it') shows no loaded" in problems, problems
    assert "the HTML has 1 <img> but the browser shows 0 loaded" in problems, problems


def test_a_wide_table_scrolls_in_its_box_and_leaves_the_page_its_width(driver: WebDriver, tmp_path: Path) -> None:
    """Tables as wide as a sweep's 'every cell' table scroll sideways inside the page, not widen it."""
    import pandas as pd

    from vditscope.report.html import page, table_html

    wide = pd.DataFrame({f"a rather long column name {i}": [0.123456, 1.5] for i in range(40)})
    path = tmp_path / "wide.html"
    path.write_text(page("wide", "wide", [table_html(wide)]), encoding="utf-8")
    driver.get(path.as_uri())
    page_width, window_width = driver.execute_script(
        "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    box_scrolls = driver.execute_script(
        "const box = document.querySelector('.table-wrap'); return box.scrollWidth > box.clientWidth"
    )
    assert page_width <= window_width and box_scrolls


def _expected_row(run_dir: Path, state: dict[str, Any]) -> Any:
    """The row of the stored token map (maps.safetensors) that the explorer's state selects, in float64: the
    query tile's row, the mean over the stored steps and/or heads where the state asks for a mean (-1)."""
    import torch
    from safetensors.torch import load_file

    maps = load_file(run_dir / "maps.safetensors")
    prefix, suffix = f"token_map.{state['generation']}.step", f".self.layer{state['layer']}"
    chosen = [t for n, t in maps.items() if n.startswith(prefix) and n.endswith(suffix)]
    if state["step"] >= 0:
        chosen = [maps[f"{prefix}{state['step']}{suffix}"]]
    stack = torch.stack([t.double() for t in chosen]).mean(0)
    per_head = stack[:, state["query"]]
    return (per_head.mean(0) if state["head"] < 0 else per_head[state["head"]]).numpy()


def _explorer_matches(driver: WebDriver, run_dir: Path) -> tuple[dict[str, Any], list[float]]:
    """The explorer's state and overlay row as the page reports them, after checking the row against the
    stored map (8-bit per row: within 1/255 of the largest value of the rows it is the mean of)."""
    import numpy as np

    state = driver.execute_script("return window.vditscopeExplorer.state()")
    row = driver.execute_script("return window.vditscopeExplorer.row()")
    assert row is not None, f"no overlay for {state}"
    expected = _expected_row(run_dir, state)
    assert len(row) == len(expected) == state["tiles"]
    np.testing.assert_allclose(row, expected, rtol=0, atol=float(expected.max()) / 255 + 1e-6)
    return state, row


def test_explorer_overlays_the_clicked_tile_and_matches_the_stored_maps(driver: WebDriver, report_html: Path) -> None:
    """Click a position in the explorer's video, change layer, head and step: the overlay follows, each row it
    draws equals the stored map's row for that query tile, arrow keys step frames, and nothing is logged."""
    import json

    from safetensors.torch import load_file
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    from vditscope.report.explorer import TileGrid, cell_span, query_tile

    run_dir = report_html.parent
    driver.get_log("browser")
    driver.get(report_html.resolve().as_uri())
    WebDriverWait(driver, 60).until(lambda d: d.execute_script("return !!window.vditscopeExplorer"))
    main = driver.find_element(By.ID, "vx-main")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", main)
    first, _ = _explorer_matches(driver, run_dir)
    before = driver.execute_script("return arguments[0].toDataURL()", main)

    # click the middle of the token at (latent frame 0, row 1, last column) of frame 0
    grid = json.loads((run_dir / "run.json").read_text())["layout"]["grid"]
    frames, height, width, _ = load_file(run_dir / "videos.safetensors")[first["generation"]].shape
    tiling = TileGrid.for_tiles(grid, first["tiles"])
    ys, xs = cell_span(1, grid[1], height), cell_span(grid[2] - 1, grid[2], width)
    y, x = (ys.start + ys.stop) / 2, (xs.start + xs.stop) / 2
    size = main.size
    offset = (x / width - 0.5) * size["width"], (y / height - 0.5) * size["height"]
    ActionChains(driver).move_to_element_with_offset(main, round(offset[0]), round(offset[1])).click().perform()
    clicked, clicked_row = _explorer_matches(driver, run_dir)
    assert clicked["query"] == query_tile(tiling, 0, int(y), int(x), frames, height, width) != first["query"]
    after_click = driver.execute_script("return arguments[0].toDataURL()", main)
    assert after_click != before

    layers = Select(driver.find_element(By.ID, "vx-layer"))
    layers.select_by_index(len(layers.options) - 1)
    Select(driver.find_element(By.ID, "vx-head")).select_by_value("1")
    changed, changed_row = _explorer_matches(driver, run_dir)
    assert changed["query"] == clicked["query"] and changed["head"] == 1 and changed["layer"] != clicked["layer"]
    assert changed_row != clicked_row
    assert driver.execute_script("return arguments[0].toDataURL()", main) != after_click
    steps = Select(driver.find_element(By.ID, "vx-step"))
    steps.select_by_index(len(steps.options) - 1)
    stepped, _ = _explorer_matches(driver, run_dir)
    assert stepped["step"] >= 0

    explorer = driver.find_element(By.ID, "vx")
    explorer.send_keys(Keys.ARROW_RIGHT)
    explorer.send_keys(Keys.ARROW_RIGHT)
    explorer.send_keys(Keys.ARROW_LEFT)
    assert driver.execute_script("return window.vditscopeExplorer.state().frame") == 1
    assert explorer.get_attribute("data-frame") == "1"
    screenshot = os.environ.get("VDITSCOPE_EXPLORER_SCREENSHOT")
    if screenshot:  # the README's picture: VDITSCOPE_EXPLORER_SCREENSHOT=docs/explorer.png
        explorer.screenshot(screenshot)
    errors = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    assert not errors, errors


def test_explorer_shows_where_a_text_token_is_looked_at_from(driver: WebDriver, report_html: Path) -> None:
    """Choose a text token: every frame shows the mass each query tile puts on it, equal (8-bit) to the stored
    text tile map (cross-attention, or joint attention's text keys) of that generation, layer and head; 'none'
    brings the clicked position's view back."""
    import numpy as np
    from safetensors.torch import load_file
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from vditscope.report.explorer import stored_text_maps

    run_dir = report_html.parent
    driver.get_log("browser")
    driver.get(report_html.resolve().as_uri())
    WebDriverWait(driver, 60).until(lambda d: d.execute_script("return !!window.vditscopeExplorer"))
    main = driver.find_element(By.ID, "vx-main")
    self_view = driver.execute_script("return arguments[0].toDataURL()", main)
    text = Select(driver.find_element(By.ID, "vx-text"))
    assert text.options[2].text == "1: red"  # "a red square ...": the prompt's own tokens label the choice
    maps = load_file(run_dir / "maps.safetensors")
    for key, head in ((1, -1), (2, 1)):
        Select(driver.find_element(By.ID, "vx-head")).select_by_value(str(head))
        text.select_by_value(str(key))
        state = driver.execute_script("return window.vditscopeExplorer.state()")
        column = driver.execute_script("return window.vditscopeExplorer.column()")
        stored = stored_text_maps(maps, [state["generation"]])[(state["generation"], state["layer"])].double()
        expected = (stored.mean(0) if head < 0 else stored[head])[:, key].numpy()
        assert state["text"] == key and column is not None and len(column) == state["tiles"]
        rows = (stored.mean(0) if head < 0 else stored[head]).numpy()
        np.testing.assert_allclose(column, expected, rtol=0, atol=float(rows.max(axis=1).max()) / 255 + 1e-6)
        assert max(column) > 0
    assert driver.execute_script("return arguments[0].toDataURL()", main) != self_view
    assert "Text token 2" in driver.find_element(By.ID, "vx-info").text
    screenshot = os.environ.get("VDITSCOPE_EXPLORER_TEXT_SCREENSHOT")
    if screenshot:  # the README's picture of the cross-attention view
        Select(driver.find_element(By.ID, "vx-head")).select_by_value("-1")
        text.select_by_value("1")
        driver.find_element(By.ID, "vx").screenshot(screenshot)
    text.select_by_value("-1")
    assert driver.execute_script("return window.vditscopeExplorer.column()") is None
    assert driver.execute_script("return window.vditscopeExplorer.row()") is not None
    errors = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    assert not errors, errors
