"""Reopen a run directory as one object: ``open_run(path)`` finds the command that wrote it (its marker, or
for runs of earlier releases its files), checks that the declared files are there, and reads each file by
its declared kind, lazily. Everything in a run directory is untrusted input: tensors are read from
safetensors only (never pickle), links are not followed, and every string is escaped in HTML.
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from markupsafe import Markup

from ..errors import VditscopeError
from .output import MARKER_PREFIX, marker_name
from .run_format import FORMATS, FileSpec, RunFormat, run_format

if TYPE_CHECKING:
    import pandas as pd
    import torch

HTML_VALUE_CHARS = 200  # a field's value is cut to this many characters in the notebook summary
FOLDER_WALK_LIMIT = 10_000  # entries counted for a folder's size in the summary


class Run:
    """One run directory of one command, read lazily (use ``open_run``)."""

    def __init__(self, path: Path, declared: RunFormat) -> None:
        self.path = path
        self.format = declared

    @property
    def command(self) -> str:
        """The command that wrote the run ("analyze", "sweep sparsity", ...)."""
        return self.format.command

    # ---- files -------------------------------------------------------------------------------------
    @cached_property
    def files(self) -> tuple[str, ...]:
        """The declared files the run holds, in declared order (undeclared entries are left out)."""
        present = _entries(self.path)
        order = {spec.name: i for i, spec in enumerate(self.format.files)}
        found = [(name, spec) for name in present if (spec := self.format.spec(name)) is not None]
        return tuple(name for name, spec in sorted(found, key=lambda item: (order[item[1].name], item[0])))

    def file(self, name: str) -> Path:
        """The path of the declared file ``name`` (a plain file or folder of the run, never a link)."""
        self._spec(name)
        path = self.path / name
        if path.is_symlink():
            raise VditscopeError(f"{path} is a link; a run's files are read only as plain files")
        if not path.exists():
            raise VditscopeError(f"{self.path} has no {name} (`vditscope {self.command}` writes it only sometimes)")
        return path

    def _spec(self, name: str, kinds: Iterable[str] = ()) -> FileSpec:
        if not name or Path(name).name != name or name in (".", ".."):
            raise VditscopeError(f"{name!r} is not a file name of a run directory")
        spec = self.format.spec(name)
        if spec is None:
            declared = ", ".join(s.name for s in self.format.files if not kinds or s.kind in kinds)
            raise VditscopeError(f"`vditscope {self.command}` runs declare no {name!r} (declared: {declared})")
        if kinds and spec.kind not in kinds:
            raise VditscopeError(f"{name} of a `vditscope {self.command}` run is {spec.kind}, not {' or '.join(kinds)}")
        return spec

    def _named(self, name: str, suffix: str) -> str:
        """``name``, or ``name + suffix`` when only that is declared ("stats" -> "stats.parquet")."""
        if self.format.spec(name) is None and self.format.spec(name + suffix) is not None:
            return name + suffix
        return name

    # ---- contents ----------------------------------------------------------------------------------
    @cached_property
    def info(self) -> dict[str, Any]:
        """The JSON that describes the run (run.json, sweep.json, metrics.json, state.json); {} if none."""
        name = self.format.info
        if name is None or not (self.path / name).exists():
            return {}
        data = self.json(name)
        if not isinstance(data, dict):
            raise VditscopeError(f"{self.path / name} holds no JSON object")
        return data

    def json(self, name: str) -> Any:
        """A declared JSON file, parsed."""
        self._spec(name, ("json",))
        path = self.file(name)
        try:
            return json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise VditscopeError(f"{path} is not valid JSON ({exc})") from None
        except OSError as exc:
            raise VditscopeError(f"could not read {path}: {exc.strerror or exc}") from None

    def table(self, name: str | None = None) -> pd.DataFrame:
        """A declared parquet table as a pandas DataFrame ("stats" or "stats.parquet"); with no name the
        command's main table. The contract's columns are checked."""
        import pandas as pd

        if name is None:
            if self.format.main_table is None:
                raise VditscopeError(f"`vditscope {self.command}` runs have no main table; name one")
            name = self.format.main_table
        name = self._named(name, ".parquet")
        spec = self._spec(name, ("table",))
        path = self.file(name)
        try:
            table = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise VditscopeError(f"could not read {path}: {_first_line(exc)}") from None
        missing = [column for column in spec.columns if column not in table.columns]
        if missing:
            raise VditscopeError(f"{path} lacks the column{'s' * (len(missing) > 1)} {', '.join(missing)}")
        return table

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        """A declared safetensors file as a dict of CPU tensors ("maps" or "maps.safetensors")."""
        from safetensors.torch import load_file

        name = self._named(name, ".safetensors")
        spec = self._spec(name, ("tensors",))
        path = self.file(name)
        if path.suffix != ".safetensors":
            raise VditscopeError(f"{path} is not a safetensors file; vditscope never unpickles tensors")
        try:
            tensors = load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types for a damaged header
            raise VditscopeError(f"could not read {path}: {_first_line(exc)}") from None
        missing = [key for key in spec.tensors if key not in tensors]
        if missing:
            raise VditscopeError(f"{path} lacks the tensor{'s' * (len(missing) > 1)} {', '.join(missing)}")
        return tensors

    @property
    def stats(self) -> pd.DataFrame:
        """stats.parquet of an analyze run: one row per prompt, seed, step, branch, layer and head."""
        if self.command != "analyze":
            raise VditscopeError(f"stats.parquet belongs to analyze runs; {self.path} is a `{self.command}` run")
        return self.table("stats.parquet")

    # ---- display -----------------------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"Run(command={self.command!r}, path={str(self.path)!r})"

    def _repr_html_(self) -> str:
        """A short summary for notebooks: the command, the info's main fields, the files with sizes."""
        try:
            info, files, note = self.info, self.files, ""
        except VditscopeError as exc:
            info, files, note = {}, (), str(exc)
        fields = "".join(
            Markup("<tr><th style='text-align:left'>{}</th><td>{}</td></tr>").format(key, _short(info[key]))
            for key in self.format.main_fields
            if key in info
        )
        row = Markup("<tr><td><code>{}</code></td><td>{}</td><td style='text-align:right'>{}</td><td>{}</td></tr>")
        rows = "".join(
            row.format(name, spec.kind, _size(self.path / name), spec.holds)
            for name in files
            if (spec := self.format.spec(name)) is not None
        )
        return str(
            Markup(
                "<div class='vditscope-run'><p><b>vditscope {}</b> run <code>{}</code><br><i>{}</i></p>{}"
                "<table>{}</table><table><tr><th>file</th><th>kind</th><th>size</th><th>holds</th></tr>{}</table></div>"
            ).format(
                self.command,
                str(self.path),
                self.format.summary,
                Markup("<p>{}</p>").format(note) if note else "",
                Markup(fields),
                Markup(rows),
            )
        )


def open_run(path: str | Path, command: str | None = None, *, require: Iterable[str] | None = None) -> Run:
    """The run in ``path``: the command comes from its marker ``.vditscope-COMMAND.json`` (or, for runs of
    earlier releases, from its files); ``command`` insists on one. The declared always-written files must be
    there (``require`` names others instead; ``require=()`` opens an unfinished resumable run). One clear
    VditscopeError otherwise."""
    path = Path(path)
    if not path.exists():
        raise VditscopeError(f"{path} is not a run directory (it does not exist)")
    if not path.is_dir():
        raise VditscopeError(f"{path} is not a run directory (it is a file)")
    found = _marked_command(path, command)
    if found is None:
        found = command if command is not None else _inferred_command(path)
    fmt = FORMATS[found]
    names = tuple(require) if require is not None else tuple(spec.name for spec in fmt.always)
    present = _entries(path)
    missing = [name for name in names if not any(fnmatch.fnmatchcase(entry, name) for entry in present)]
    if missing:
        resume = " (unfinished? rerun the same command to finish it)" if fmt.resumable else ""
        verb = "is" if len(missing) == 1 else "are"
        raise VditscopeError(
            f"{path} is not a complete `vditscope {found}` run: {', '.join(missing)} {verb} missing{resume}"
        )
    return Run(path, fmt)


def _marked_command(path: Path, command: str | None) -> str | None:
    """The command named by the run's marker (None when it has none); clear errors for a marker that names
    an unknown command, for several commands' outputs without ``command``, and for another command's run."""
    if command is not None:
        run_format(command)  # ValueError for a command with no declared format: a caller's mistake
    marked: list[str] = []
    for marker in sorted(path.glob(f"{MARKER_PREFIX}*.json")):
        try:
            data = json.loads(marker.read_text())
        except (OSError, ValueError, UnicodeDecodeError):
            raise VditscopeError(f"{path} has a damaged marker {marker.name} (not readable JSON)") from None
        named = data.get("command") if isinstance(data, dict) else None
        if not isinstance(named, str) or marker_name(named) != marker.name:
            raise VditscopeError(f"{path} has a damaged marker {marker.name} (it does not name its command)")
        if named not in FORMATS:
            known = ", ".join(sorted(FORMATS))
            raise VditscopeError(f"{path}: its marker names {named!r}, which is no vditscope command (known: {known})")
        marked.append(named)
    if command is not None:
        if not marked:
            return None  # a run of an earlier release: the caller's word, checked by its files
        if command in marked:
            return command
        raise VditscopeError(f"{path} is a `vditscope {' and '.join(marked)}` run, not a `vditscope {command}` run")
    if len(marked) > 1:
        raise VditscopeError(
            f"{path} holds the outputs of several commands ({', '.join(marked)}); open_run(path, command=...) picks one"
        )
    return marked[0] if marked else None


def _inferred_command(path: Path) -> str:
    """The command of an unmarked run (earlier releases): among the formats that may be recognized so, the one
    whose info file and always-written files are all there; its info's ``info_match`` field tells twins apart,
    and a format whose files include another's wins (an edit run also holds a generate run's files)."""
    present = _entries(path)
    candidates = [
        fmt
        for fmt in FORMATS.values()
        if fmt.recognized
        and fmt.info in present
        and all(any(fnmatch.fnmatchcase(name, spec.name) for name in present) for spec in fmt.always)
    ]
    if len(candidates) > 1:
        info = _json_or_empty(path / str(candidates[0].info))
        candidates = [f for f in candidates if f.info_match is None or info.get(f.info_match[0]) == f.info_match[1]]
    names = {fmt.command: {spec.name for spec in fmt.always} for fmt in candidates}
    candidates = [f for f in candidates if not any(names[f.command] < other for other in names.values())]
    if len(candidates) == 1:
        return candidates[0].command
    raise VditscopeError(
        f"{path} is not a vditscope run directory: it has no {MARKER_PREFIX}COMMAND.json marker and does not hold "
        "the files of any command's run"
    )


def _json_or_empty(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _entries(path: Path) -> list[str]:
    """The top-level names in ``path``, markers and other hidden entries left out."""
    try:
        return sorted(name for name in os.listdir(path) if not name.startswith("."))
    except OSError as exc:
        raise VditscopeError(f"could not read {path}: {exc.strerror or exc}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _short(value: Any) -> str:
    """A field's value as short text (JSON for lists and dicts)."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= HTML_VALUE_CHARS else text[: HTML_VALUE_CHARS - 1] + "…"


def _size(path: Path) -> str:
    """A file's size, or a folder's entry count and total size, in human units."""
    try:
        if path.is_symlink():
            return "link"
        if not path.is_dir():
            return _bytes(path.stat().st_size)
        count = total = 0
        for root, _, files in os.walk(path):
            for name in files:
                count += 1
                total += os.lstat(os.path.join(root, name)).st_size
            if count >= FOLDER_WALK_LIMIT:
                return f"{count}+ files"
        return f"{count} files, {_bytes(total)}"
    except OSError:
        return "?"


def _bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
