"""The one output policy of every command: where ``--out`` may point, and how a run lands there.

``--out`` may be new (or an empty directory), or an earlier output of the same command, which is then
replaced (atomic commands) or resumed (sweeps, training). Anything else is refused before any work:
a file, a link, a non-empty directory that is not such an output, an input (the model, a run being
compared) or anything inside or above one. ``--overwrite`` lets a run write into a non-empty directory,
but never removes or replaces a path that no vditscope command wrote. A lock beside ``--out`` makes a
second concurrent run refuse at once. Each output holds a marker, ``.vditscope-COMMAND.json``, that
lists what the command wrote there; that list is what "an earlier output" and "ours" mean.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fnmatch
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import VditscopeError
from ..version import __version__
from .run_format import files_of

MARKER_PREFIX = ".vditscope-"
STAGING_MARK = ".vditscope-staging"
NAME_MAX = 255
OVERWRITE_HINT = "choose a new --out, or pass --overwrite to write beside what is there (nothing of yours is removed)"


class OutputError(VditscopeError):
    """An --out that the policy refuses, or a file system failure while writing one."""


def marker_name(command: str) -> str:
    """The marker file of ``command`` ('sweep sparsity' -> '.vditscope-sweep-sparsity.json')."""
    return f"{MARKER_PREFIX}{command.replace(' ', '-')}.json"


def sibling(path: Path, suffix: str, reserve: int = 0) -> Path:
    """A hidden name beside ``path`` (``.NAME.SUFFIX``) that stays within the file system's name limit,
    with ``reserve`` bytes left for a random tail (mkdtemp)."""
    name = f".{path.name}.{suffix}"
    if len(name.encode()) + reserve > NAME_MAX:
        digest = hashlib.sha256(path.name.encode()).hexdigest()[:16]
        name = f".vditscope-{digest}.{suffix}"
    return path.parent / name


def fs_error(exc: OSError, path: Path | str, doing: str) -> OutputError:
    """One line for a file system failure: what, where and why."""
    where = exc.filename or path
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        reason = "no space left on the device"
    return OutputError(f"cannot {doing} {where}: {reason}")


def read_marker(directory: Path, command: str) -> dict[str, Any] | None:
    """The marker of ``command`` in ``directory`` (None when absent or unreadable)."""
    path = directory / marker_name(command)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("command") == command else None


def _stamp(path: Path) -> str | list[int]:
    """What a marker remembers of a path it lists: "dir", or a file's size and modification time, so that
    a file the user replaced or edited under the same name is no longer counted as the tool's."""
    info = path.lstat()
    return "dir" if path.is_dir() and not path.is_symlink() else [info.st_size, info.st_mtime_ns]


def _stamps(root: Path, names: Iterable[str]) -> dict[str, str | list[int]]:
    return {name: _stamp(root / name) for name in sorted(set(names))}


def _listed(directory: Path, marker: dict[str, Any]) -> set[str]:
    """The paths a marker lists that are still as the command left them."""
    files = marker.get("files")
    if not isinstance(files, dict):
        return set()
    ours = set()
    for name, stamp in files.items():
        parts = Path(str(name)).parts
        if not parts or Path(str(name)).is_absolute() or ".." in parts:
            continue  # a marker is input too (a run directory someone sent): never reach outside it
        path = directory / str(name)
        with contextlib.suppress(OSError):
            if (path.exists() or path.is_symlink()) and _stamp(path) == stamp:
                ours.add(str(name))
    return ours


def _our_paths(directory: Path) -> set[str]:
    """Every path (relative, '/'-separated) that a vditscope marker in ``directory`` says it wrote, and
    that is still as it was written."""
    ours: set[str] = set()
    for marker in directory.glob(f"{MARKER_PREFIX}*.json"):
        try:
            data = json.loads(marker.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            ours.add(marker.name)
            ours |= _listed(directory, data)
    return ours


def _entries(directory: Path) -> list[str]:
    """Every file and folder below ``directory``, relative and '/'-separated (links are not followed)."""
    found = []
    for root, dirs, files in os.walk(directory):
        rel = Path(root).relative_to(directory)
        found.extend((rel / name).as_posix() for name in [*dirs, *files])
    return found


def _existing_ancestor(path: Path) -> Path:
    """``path`` itself when it exists, else its nearest existing ancestor."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _is_within(path: Path, other: Path) -> bool:
    return path == other or other in path.parents


class _Lock:
    """An advisory lock file beside the output (flock), removed on release. A second run on the same
    output refuses at once instead of waiting."""

    def __init__(self, path: Path, out: Path) -> None:
        self.path, self.out, self.fd = path, out, -1

    def acquire(self) -> None:
        import fcntl

        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 64).decode(errors="replace").strip()
                os.close(fd)
                raise OutputError(
                    f"another vditscope run is writing {self.out}"
                    + (f" (process {holder})" if holder else "")
                    + "; wait for it to finish or choose another --out"
                ) from None
            # the file may have been released and unlinked by its last holder between open and flock
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, str(os.getpid()).encode())
                self.fd = fd
                return
            os.close(fd)
        raise OutputError(f"could not lock {self.out}: its lock file {self.path} keeps changing")

    def release(self) -> None:
        if self.fd < 0:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self.fd)  # closing drops the flock
        self.fd = -1


def follower_rank() -> bool:
    """Whether this process is a rank other than 0 of a launch of several processes (torchrun: WORLD_SIZE > 1),
    which computes what rank 0 does and neither writes --out nor prints results."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and int(os.environ.get("RANK", "0")) != 0


def follower_scratch() -> Path | None:
    """For a follower rank (``follower_rank``), a new private temporary folder to write to instead of --out
    (removed when the process ends: the command may read back what it wrote); None otherwise."""
    if not follower_rank():
        return None
    scratch = Path(tempfile.mkdtemp(prefix=f"vditscope-rank{os.environ['RANK']}-"))
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    return scratch


class OutputDir:
    """A claim on one command's output directory, taken before any work (checks, then a lock) and held
    until the run is written. Use as a context manager::

        with OutputDir(out, "analyze", files=[...], inputs=[model_dir]) as output:
            ...  # every check that needs the model, then the work
            with output.staging() as staging:
                ...  # write the run's files into staging; they land in ``out`` at the end

    Resumable commands call ``output.open()`` instead and write into ``output.path`` as they go.

    ``files`` are the names (fnmatch patterns allowed) the command writes at the top of its output; with
    ``overwrite`` they must not already exist there as someone else's files. By default they are the ones
    the command's run format declares (``files_of(command)``, store/run_format.py).
    """

    def __init__(
        self,
        out: str | Path,
        command: str,
        *,
        files: Sequence[str] | None = None,
        inputs: Iterable[str | Path | None] = (),
        overwrite: bool = False,
        resumable: bool = False,
        expected_bytes: int = 0,
    ) -> None:
        self.path = Path(os.path.abspath(Path(out).expanduser()))
        self.command = command
        self.files = tuple(files) if files is not None else files_of(command)
        self.inputs = [Path(os.path.realpath(Path(p).expanduser())) for p in inputs if p is not None]
        self.overwrite = overwrite
        self.resumable = resumable
        self.expected_bytes = expected_bytes
        self.merge = False  # write file by file into an existing directory instead of swapping it
        self._made_parents: list[Path] = []
        self._made_dir = False
        self._wrote_marker = False
        self._lock: _Lock | None = None
        # a torchrun launch's other ranks compute what rank 0 does, and write it to a private folder
        self._scratch = follower_scratch()
        if self._scratch is not None:
            self.path = self._scratch / self.path.name

    # ---- claim -------------------------------------------------------------------------------------
    def __enter__(self) -> OutputDir:
        self.check()
        self._make_parents()
        try:
            self._lock = _Lock(sibling(self.path, "lock"), self.path)
            self._lock.acquire()
        except BaseException:
            self._remove_made_parents()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        try:
            if kind is not None:
                self._undo_unfinished()
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None
            if kind is not None:
                self._remove_made_parents()

    def check(self) -> None:
        """Every check that needs only the path: refuse in one line before any work."""
        path = self.path
        if len(path.name.encode()) > NAME_MAX:
            raise OutputError(f"--out name is too long ({len(path.name.encode())} bytes; the limit is {NAME_MAX})")
        if path.is_symlink():
            raise OutputError(f"--out {path} is a symbolic link; {OVERWRITE_HINT.split(',')[0]}")
        real = Path(os.path.realpath(path))
        for source in self.inputs:
            if _is_within(real, source) or _is_within(source, real):
                raise OutputError(f"--out {path} overlaps the input {source}; choose a folder outside it")
        if path.exists() and not path.is_dir():
            raise OutputError(f"--out {path} is a file; choose a folder path (nothing was written)")
        existing = _existing_ancestor(self.path)
        if not existing.is_dir():
            raise OutputError(f"cannot create {path}: {existing} is a file, not a folder")
        _check_writable(existing)
        if self.expected_bytes:
            free = shutil.disk_usage(existing).free
            if free < self.expected_bytes:
                raise OutputError(
                    f"not enough free space for {path}: about {self.expected_bytes / 2**20:.0f} MiB needed, "
                    f"{free / 2**20:.0f} MiB free"
                )
        if not path.exists():
            return
        cwd = Path(os.path.realpath(Path.cwd()))
        holds_cwd = _is_within(cwd, real)
        entries = _entries(path)
        marker = read_marker(path, self.command)
        ours = _our_paths(path)
        if marker is not None and (self.resumable or set(entries) <= ours) and not holds_cwd:
            # an earlier output of this command: resumed, or replaced (file by file where it also holds
            # the outputs of other commands)
            self.merge = not set(entries) <= {*self._mine(), marker_name(self.command)}
            return
        if not entries:
            self.merge = True  # an empty folder the user made: keep it, fill it
            return
        if not self.overwrite:
            if holds_cwd:
                what = "the current folder or one above it"
            elif marker is None:
                what = f"a folder that is not an earlier output of `vditscope {self.command}`"
            else:
                foreign = sorted(set(entries) - ours)[0]
                what = f"an earlier output of `vditscope {self.command}` that now also holds {foreign}"
            raise OutputError(f"--out {path} is {what}; {OVERWRITE_HINT}")
        clashes = sorted(
            name
            for name in entries
            if "/" not in name and name not in ours and any(fnmatch.fnmatch(name, p) for p in self.files)
        )
        if clashes:
            raise OutputError(
                f"--out {path} already holds {clashes[0]}, which vditscope did not write; "
                "--overwrite never replaces your files: move it or choose another --out"
            )
        self.merge = True

    def _make_parents(self) -> None:
        missing = []
        probe = self.path.parent
        while not probe.exists():
            missing.append(probe)
            probe = probe.parent
        for folder in reversed(missing):
            try:
                folder.mkdir()
            except OSError as exc:
                self._remove_made_parents()
                raise fs_error(exc, folder, "create") from None
            self._made_parents.append(folder)

    def _remove_made_parents(self) -> None:
        for folder in reversed(self._made_parents):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only while empty
        self._made_parents = []

    def _undo_unfinished(self) -> None:
        """After a failure: a resumable output that holds nothing but the marker this claim wrote loses
        the marker again (and the folder, when this claim made it), so bad input leaves nothing behind."""
        if not self._wrote_marker:
            return
        marker = marker_name(self.command)
        if all(name == marker for name in _entries(self.path)):
            with contextlib.suppress(OSError):
                (self.path / marker).unlink()
                if self._made_dir:
                    self.path.rmdir()

    # ---- writing -----------------------------------------------------------------------------------
    def marker(self, files: dict[str, str | list[int]] | None = None) -> dict[str, Any]:
        """The marker's content: the command, and (atomic outputs) every path it wrote with its stamp."""
        return {
            "command": self.command,
            "vditscope": __version__,
            "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "resumable": self.resumable,
            "files": files,
        }

    def open(self) -> Path:
        """A resumable output: the folder (created when new) with this command's marker; call it after
        every check, right before the first write."""
        try:
            if not self.path.exists():
                self.path.mkdir()
                self._made_dir = True
            if read_marker(self.path, self.command) is None:
                self._write_marker(self.path, self.marker())
                self._wrote_marker = True
        except OSError as exc:
            raise fs_error(exc, self.path, "write") from None
        return self.path

    def _mine(self) -> set[str]:
        """What this command's marker in ``out`` lists and is still as written (empty when resumable)."""
        return _listed(self.path, read_marker(self.path, self.command) or {})

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A private folder beside ``out``; when the block succeeds its files become the output. A
        failure while writing removes it; a failure while moving it into place keeps it and says where."""
        try:
            prefix = sibling(self.path, "partial-", reserve=8).name
            staging = Path(tempfile.mkdtemp(prefix=prefix, dir=self.path.parent))
            (staging / STAGING_MARK).touch()
        except OSError as exc:
            raise fs_error(exc, self.path.parent, "write in") from None
        try:
            yield staging
        except BaseException as exc:
            shutil.rmtree(staging, ignore_errors=True)
            if isinstance(exc, OSError):
                raise fs_error(exc, self.path, "write") from None
            raise
        try:
            self._commit(staging)
        except OSError as exc:
            raise OutputError(
                f"cannot move the finished run into {self.path}: {exc.strerror or exc}; it is kept in {staging}"
            ) from None
        self.remove_leftovers()

    def _commit(self, staging: Path) -> None:
        (staging / STAGING_MARK).unlink()
        written = _entries(staging)
        unexpected = [n for n in written if "/" not in n and not any(fnmatch.fnmatch(n, p) for p in self.files)]
        if unexpected:
            raise OutputError(f"internal error: {self.command} wrote {unexpected[0]}, which it does not declare")
        _normal_permissions(staging)
        marker = self.marker(_stamps(staging, written))
        if self.path.exists() and not set(_entries(self.path)) <= {*self._mine(), marker_name(self.command)}:
            self.merge = True  # it holds more than this command's earlier output (perhaps since we started)
        if not self.merge:
            self._write_marker(staging, marker)
            if self.path.exists():
                old = Path(tempfile.mkdtemp(prefix=sibling(self.path, "old-", reserve=8).name, dir=self.path.parent))
                (old / STAGING_MARK).touch()
                os.replace(self.path, old / self.path.name)
                os.replace(staging, self.path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(staging, self.path)
            return
        self.path.mkdir(exist_ok=True)
        ours = _our_paths(self.path)
        previous = set(self._mine())
        for name in sorted(n for n in written if "/" not in n):
            target = self.path / name
            if (target.exists() or target.is_symlink()) and name not in ours:
                raise OutputError(
                    f"{target} appeared while the run was working and is not vditscope's; the run is kept in "
                    f"{staging} until the next run of this command"
                )
        self._write_marker(self.path, marker)
        for name in sorted(n for n in written if "/" not in n):
            target = self.path / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(staging / name, target)
        for stale in sorted(previous - set(written) - {marker_name(self.command)}, reverse=True):
            target = self.path / stale
            with contextlib.suppress(OSError):
                if target.is_dir() and not target.is_symlink():
                    target.rmdir()
                else:
                    target.unlink()

    def _write_marker(self, folder: Path, marker: dict[str, Any]) -> None:
        text = json.dumps(marker, indent=1) + "\n"
        write_atomic(folder / marker_name(self.command), lambda path: path.write_text(text))

    def remove_leftovers(self) -> None:
        """Staging folders of earlier interrupted runs of this output (ours by name and mark, or empty)."""
        for suffix in ("partial-", "old-"):
            prefix = sibling(self.path, suffix, reserve=8).name
            for folder in self.path.parent.glob(f"{glob_escape(prefix)}*"):
                if folder.is_dir() and not folder.is_symlink():
                    if (folder / STAGING_MARK).is_file():
                        shutil.rmtree(folder, ignore_errors=True)
                    else:
                        with contextlib.suppress(OSError):
                            folder.rmdir()


def _check_writable(folder: Path) -> None:
    """Create and remove a file in ``folder``: the one honest test of writability (root ignores modes)."""
    try:
        handle, name = tempfile.mkstemp(prefix=".vditscope-probe-", dir=folder)
    except OSError as exc:
        raise fs_error(exc, folder, "write in") from None
    os.close(handle)
    os.remove(name)


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write one file through a temporary file in the same directory, then rename: never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=sibling(path, "tmp-", reserve=8).name, dir=path.parent)
    os.close(handle)
    try:
        write(Path(temporary))
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600; a result file gets the usual mode
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def glob_escape(text: str) -> str:
    """``text`` with glob's special characters taken literally."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def _normal_permissions(directory: Path) -> None:
    """mkdtemp makes private (0700) folders; give the run the usual umask-based modes."""
    umask = _umask()
    directory.chmod(0o777 & ~umask)
    for path in directory.rglob("*"):
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def checked_output_file(path: str | Path, command: str, *, inputs: Iterable[str | Path | None] = ()) -> Path:
    """A single output file (e.g. ``eval-tiny --json``): new, or an earlier one of ``command`` (a JSON
    object whose ``written_by`` names it). Anything else is refused before any work."""
    target = Path(os.path.abspath(Path(path).expanduser()))
    if len(target.name.encode()) > NAME_MAX - 16:
        raise OutputError(f"{target.name[:40]}... is too long a file name")
    real = Path(os.path.realpath(target))
    for source in inputs:
        if source is not None and _is_within(real, Path(os.path.realpath(source))):
            raise OutputError(f"{target} is inside the input {source}; choose a path outside it")
    if target.is_symlink() or target.is_dir():
        raise OutputError(f"{target} is a {'link' if target.is_symlink() else 'folder'}; give a new file path")
    if target.exists():
        try:
            written_by = json.loads(target.read_text()).get("written_by")
        except (OSError, ValueError, AttributeError):
            written_by = None
        if written_by != f"vditscope {command}":
            raise OutputError(f"{target} exists and was not written by `vditscope {command}`; give a new file path")
    probe = _existing_ancestor(target.parent)
    if not probe.is_dir():
        raise OutputError(f"cannot create {target}: {probe} is a file, not a folder")
    _check_writable(probe)
    return target
