"""Write-then-rename, so an interrupted run never leaves a half-written output under its name;
and the checks every command makes on an output path before it starts working.

A temporary sibling is named `.{stem}.partial-{host}-{pid}-{random}{suffix}`: a run killed
with SIGKILL cannot remove it, so the next write of the same target removes partials whose
process (on this host) is gone.
"""

from __future__ import annotations

import csv
import errno
import fcntl
import json
import os
import re
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import OutputBusyError, UsageError

_HOST = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"
_PARTIAL = re.compile(r"\.partial-(?P<host>[A-Za-z0-9_.]+)-(?P<pid>\d+)-[0-9a-f]{8}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def pid_alive(pid: int) -> bool:
    """Whether a process of this host still runs (someone else's counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_partials(target: Path) -> list[Path]:
    """Remove partials of `target` left by dead processes on this host; return them."""
    removed = []
    prefix = f".{target.stem}.partial-"
    try:
        siblings = list(target.parent.iterdir())
    except OSError:
        return removed
    for p in siblings:
        if not (p.name.startswith(prefix) and p.name.endswith(target.suffix)):
            continue
        m = _PARTIAL.search(p.name[len(target.stem) + 1 :])
        if m and m["host"] == _HOST and not pid_alive(int(m["pid"])):
            _remove(p)
            removed.append(p)
    return removed


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path; on success it replaces `target` (file or folder)."""
    target = Path(target)
    remove_stale_partials(target)
    # keep the suffix: some writers (SimpleITK) pick the format from it
    tag = f"{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = target.with_name(f".{target.stem}.partial-{tag}{target.suffix}")
    try:
        yield tmp
        _replace(tmp, target)
    except BaseException:
        _remove(tmp)
        raise


def _replace(tmp: Path, target: Path, tries: int = 5) -> None:
    """Move `tmp` to `target`, moving an existing target aside first (a folder cannot be
    replaced in one rename). Another writer may put its own target there in between (a
    region merge of a concurrent batch): then the newer whole output wins, never an error."""
    for _ in range(tries):
        old = None
        if target.exists() or target.is_symlink():
            old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
            try:
                os.replace(target, old)
            except FileNotFoundError:  # moved aside by the other writer meanwhile
                old = None
        try:
            os.replace(tmp, target)
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EISDIR):
                raise
            continue  # a folder appeared at `target` since: move it aside too
        finally:
            if old is not None:
                _remove(old)
        return
    raise OSError(errno.EBUSY, f"{target} keeps being replaced by another process")


@contextmanager
def output_lock(target: str | Path) -> Iterator[None]:
    """One writer per output at a time, across processes of this host (and hosts sharing a
    file system with working locks): `.NAME.lock` beside `target`, held with flock for the
    duration. A second run on the same output is told so at once (OutputBusyError: one line,
    exit 2) instead of racing the first one's rename. The lock file is removed on release;
    a holder that finds its file replaced meanwhile takes the lock again on the new one."""
    target = Path(target)
    lock = target.with_name(f".{target.name}.lock")
    made = None  # the output folder, when this run created it (removed again if left empty)
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:
            if made is None and not lock.parent.exists():
                made = lock.parent
            try:
                lock.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise UsageError(f"cannot create {lock.parent}: {e.strerror or e}") from None
            continue
        except OSError as e:
            raise UsageError(f"cannot write in {target.parent}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise OutputBusyError(
                f"{target} is being written by {holder}; wait for it to finish, or write elsewhere"
            ) from None
        try:  # the file we locked is still the one at `lock` (not removed by a releaser)
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()} on {_HOST}".encode())
        yield
    finally:
        try:
            os.unlink(lock)
        except OSError:
            pass
        os.close(fd)
        if made is not None:
            try:
                made.rmdir()  # only if empty: a failed lone slide leaves no folder behind
            except OSError:
                pass


def _probe_writable(folder: Path) -> None:
    try:
        fd, name = tempfile.mkstemp(prefix=".slidepress-probe-", dir=folder)
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        raise UsageError(f"cannot write in {folder}: {e.strerror or e}") from None


def check_output(
    path: str | Path,
    *,
    overwrite: bool = False,
    inputs: Sequence[str | Path] = (),
    folder: bool = False,
) -> Path:
    """Refuse, before any work starts, an output that would overwrite an input, replace an
    existing output without `overwrite`, or cannot be written (missing or non-folder parent,
    read-only or virtual file system). One line naming the path."""
    path = Path(path)
    for i in map(Path, inputs):
        if path.exists() and i.exists() and path.resolve() == i.resolve():
            raise UsageError(f"refusing to overwrite the input {i}")
    if folder:
        if path.exists() and not path.is_dir():
            raise UsageError(f"output {path} exists and is not a folder")
        base = path
        while not base.exists():  # mkdir -p will create the rest
            if base.parent == base:
                break
            base = base.parent
        if not base.is_dir():
            raise UsageError(f"cannot create output folder {path}: {base} is not a folder")
        _probe_writable(base)
        return path
    if path.is_dir():
        raise UsageError(f"output {path} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise UsageError(f"{path} exists; use --overwrite to replace it")
    parent = path.parent
    if not parent.exists():
        raise UsageError(f"cannot write {path}: folder {parent} does not exist")
    if not parent.is_dir():
        raise UsageError(f"cannot write {path}: {parent} is not a folder")
    _probe_writable(parent)
    return path


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, data: Any) -> Path:
    """Indented JSON through `json_safe` (numpy -> numbers, NaN/inf -> null, paths -> str)."""
    from ..jsonsafe import json_safe

    return write_text(path, json.dumps(json_safe(data), indent=2) + "\n")


def write_csv(path: str | Path, rows: list[dict], columns: Sequence[str] = ()) -> Path:
    """Rows of dicts; the header is `columns`, then the other keys of the rows in first-seen
    order (so an empty table still has its header)."""
    keys = list(dict.fromkeys([*columns, *(k for r in rows for k in r)]))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    return Path(path)


def save_figure(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """A matplotlib figure as PNG, then closed (figures otherwise pile up in pyplot)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    try:
        import matplotlib.pyplot as plt

        plt.close(fig)
    except Exception:  # a bare matplotlib.figure.Figure is not registered with pyplot
        pass
    return Path(path)
