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
        width=64,
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
