"""Write a run directory's files by their declared kind (store/run_format.py), so that a command cannot write
a file its format does not declare, or write one in another form than declared: drift between the code and
the format fails at once (ValueError) instead of leaving runs that readers do not understand."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .output import write_atomic
from .run_dir import write_json, write_table, write_tensors
from .run_format import FileSpec, RunFormat, run_format

if TYPE_CHECKING:
    import torch

BYTES_KINDS = ("video", "figure", "html", "text", "other")
TEXT_KINDS = ("html", "text")


class RunWriter:
    """The declared files of ``command``'s output, written into ``folder`` (the staging folder of an
    atomic command, or the output itself of a resumable one: then pass ``atomic=True`` so that every file
    lands whole). Each method returns the path it wrote."""

    def __init__(self, folder: str | Path, command: str, *, atomic: bool = False) -> None:
        self.folder = Path(folder)
        self.format: RunFormat = run_format(command)
        self.atomic = atomic

    @property
    def command(self) -> str:
        return self.format.command

    def path(self, name: str, *kinds: str) -> Path:
        """The path of the declared file ``name`` in the folder (ValueError when the format does not declare
        it, or declares it as another kind than ``kinds``)."""
        self._spec(name, kinds)
        return self.folder / name

    def _spec(self, name: str, kinds: tuple[str, ...]) -> FileSpec:
        if not name or Path(name).name != name or name in (".", ".."):
            raise ValueError(f"{name!r} is not a file name at the top of a run directory")
        spec = self.format.spec(name)
        if spec is None:
            raise ValueError(
                f"`vditscope {self.command}` does not declare {name!r}: declare it in store/run_format.py first"
            )
        if kinds and spec.kind not in kinds:
            raise ValueError(
                f"`vditscope {self.command}` declares {name} as {spec.kind}, not {' or '.join(kinds)} "
                "(store/run_format.py)"
            )
        return spec

    def _put(self, path: Path, write: Callable[[Path], None]) -> Path:
        if self.atomic:
            write_atomic(path, write)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            write(path)
        return path

    def json(self, name: str, data: Any) -> Path:
        """A declared JSON file (``write_json``: Paths and arrays become JSON)."""
        return self._put(self.path(name, "json"), lambda path: write_json(path, data))

    def table(self, name: str, table: Any) -> Path:
        """A declared table as parquet (a pandas DataFrame); the contract's columns must be there."""
        spec = self._spec(name, ("table",))
        missing = [column for column in spec.columns if column not in table.columns]
        if missing:
            raise ValueError(f"{name} of `vditscope {self.command}` needs the columns {', '.join(missing)}")
        return self._put(self.folder / name, lambda path: write_table(path, table))

    def csv(self, name: str, table: Any) -> Path:
        """A declared CSV copy of a table."""
        return self._put(self.path(name, "csv"), lambda path: table.to_csv(path, index=False))

    def tensors(self, name: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
        """A declared safetensors file; the contract's tensor names must be there."""
        spec = self._spec(name, ("tensors",))
        missing = [key for key in spec.tensors if key not in tensors]
        if missing:
            raise ValueError(f"{name} of `vditscope {self.command}` needs the tensors {', '.join(missing)}")
        return self._put(self.folder / name, lambda path: write_tensors(path, tensors, metadata))

    def bytes(self, name: str, data: bytes) -> Path:
        """A declared video, figure, page or other file, as encoded bytes."""
        return self._put(self.path(name, *BYTES_KINDS), lambda path: path.write_bytes(data))

    def text(self, name: str, text: str) -> Path:
        """A declared page or text file."""
        return self._put(self.path(name, *TEXT_KINDS), lambda path: path.write_text(text))

    def folder_path(self, name: str) -> Path:
        """A declared folder, created when missing."""
        path = self.path(name, "folder")
        path.mkdir(parents=True, exist_ok=True)
        return path

    def missing(self) -> list[str]:
        """The always-written files (names or globs) not yet in the folder: what a finished run still lacks."""
        present = [p.name for p in self.folder.iterdir()] if self.folder.is_dir() else []
        return [
            spec.name
            for spec in self.format.always
            if not any(fnmatch.fnmatchcase(name, spec.name) for name in present)
        ]


def resident_memory() -> int | None:
    """This process's resident memory now (bytes; None where neither psutil nor /proc/self/statm says)."""
    try:
        import psutil
    except ImportError:
        pass
    else:
        return int(psutil.Process().memory_info().rss)
    try:
        import os

        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def peak_memory(device: str) -> dict[str, Any]:
    """What run.json records as a run's measured peak: this process's peak resident memory (ru_maxrss, whole
    process lifetime) and, on CUDA, the peak of torch's allocated device memory since the run reset it."""
    import sys

    import torch

    peak: dict[str, Any] = {"host_bytes": None, "host_source": None, "device_bytes": None, "device_source": None}
    try:
        import resource  # not on Windows
    except ImportError:
        pass
    else:
        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
        peak["host_bytes"] = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale
        peak["host_source"] = "resource.getrusage(RUSAGE_SELF).ru_maxrss of this process"
    if device.startswith("cuda") and torch.cuda.is_available():
        peak["device_bytes"] = int(torch.cuda.max_memory_allocated(torch.device(device)))
        peak["device_source"] = "torch.cuda.max_memory_allocated"
    return peak
