"""Every figure of a report also as files, ``figures/NAME.png`` and ``figures/NAME.svg`` beside the page:
figures to take out for a paper or slides without cutting them out of the HTML.

A report writer wraps its work in ``figure_files(directory)``; while it is open, ``figures.figure_png``
also renders each figure as SVG (``Figure``) and ``html.figure_html`` hands it over under the name the
page gives it. The files are written when the block ends without an error, into a fresh folder that
replaces the previous render's as a whole.
"""

from __future__ import annotations

import functools
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

FIGURES_DIR = "figures"


class Figure(bytes):
    """PNG bytes of a figure, with the same figure as SVG text in ``svg``."""

    svg: str

    def __new__(cls, png: bytes, svg: str) -> Figure:
        figure = super().__new__(cls, png)
        figure.svg = svg
        return figure


_collected: ContextVar[dict[str, Figure] | None] = ContextVar("vditscope_figures", default=None)


def collecting() -> bool:
    """Whether a ``figure_files`` block is open (figures then also render as SVG)."""
    return _collected.get() is not None


def file_stem(name: str) -> str:
    """A file name stem from a figure's name on the page: lowercase letters, digits and dashes only (names can
    carry prompts or token strings)."""
    stem = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:80].strip("-")
    return stem or "figure"


def add_figure(name: str, figure: bytes | None) -> None:
    """Keep ``figure`` under ``name`` when a block is open and it was rendered with its SVG (a GIF or a PNG
    read from a file is not a figure of this render)."""
    collected = _collected.get()
    if collected is None or not isinstance(figure, Figure):
        return
    stem, n = file_stem(name), 2
    unique = stem
    while unique in collected:
        unique, n = f"{stem}-{n}", n + 1
    collected[unique] = figure


@contextmanager
def figure_files(directory: Path) -> Iterator[dict[str, Figure]]:
    """Collect the figures rendered in the block; on success write them to ``directory/figures`` (replacing
    a previous render's folder as a whole). Yields the collected figures by file stem. A block opened inside
    another one adds to the outer block's figures, which the outer block writes."""
    outer = _collected.get()
    if outer is not None:
        yield outer
        return
    collected: dict[str, Figure] = {}
    token = _collected.set(collected)
    try:
        yield collected
    finally:
        _collected.reset(token)
    if collected:
        write_figures(Path(directory), collected)


def writes_figures(write: Callable[..., T]) -> Callable[..., T]:
    """Decorate a report writer ``write(path, ...)``: the figures its page shows are also written to
    ``path.parent/figures``."""

    @functools.wraps(write)
    def wrapper(path: Path, *args: Any, **kwargs: Any) -> T:
        with figure_files(Path(path).parent):
            return write(path, *args, **kwargs)

    return wrapper


def write_figures(directory: Path, figures: dict[str, Figure]) -> Path:
    """``figures`` as ``directory/figures/STEM.png`` and ``.svg``, written beside and moved into place."""
    target = directory / FIGURES_DIR
    staging = Path(tempfile.mkdtemp(prefix=".figures-", dir=directory))
    try:
        for stem, figure in figures.items():
            (staging / f"{stem}.png").write_bytes(bytes(figure))
            (staging / f"{stem}.svg").write_text(figure.svg, encoding="utf-8")
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return target
