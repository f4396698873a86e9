"""Files written atomically: a temporary sibling, flushed to disk, then renamed onto the target.

A crash (or SIGKILL) at any moment leaves either the old file or the new one, never a half-written one; a reader
never sees a partial file; concurrent writers of the same file each rename a complete copy. Files get the
permissions the user's umask gives a new file (a temporary file alone would be private, 0600).

Temporary names start with `TEMPORARY`, a prefix no user file is expected to have, so that sweeping what an
interrupted write left behind (`dslim.io.outputs.sweep`) never touches a user's `.tmp` files. A write that fails
for want of space (or any other error of the file system) ends in one line (`UserError`) naming the file, the
temporary copy removed and the previous file as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from dslim.errors import UserError

TEMPORARY = ".dslim-tmp-"
"""The prefix of every temporary file and folder dslim writes (renamed onto its target once complete)."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()
DIR_MODE = 0o777 & ~_umask()

# How libraries that write files themselves (safetensors' Rust core, PyTorch's zip writer, the ONNX exporters)
# report an error of the file system: the same failures an OSError reports from Python.
_IO_FAILURE = re.compile(r"No space left on device|Disk quota exceeded|File too large|Read-only file system|"
                         r"os error \d+|file write failed|Input/output error")  # fmt: skip


def is_temporary(path: str | os.PathLike) -> bool:
    """Whether `path` is a temporary file or folder of dslim's (the leftover of an interrupted write)."""
    return Path(path).name.startswith(TEMPORARY)


def temporary_name(path: Path) -> str:
    """The prefix of a temporary sibling of `path`."""
    return f"{TEMPORARY}{path.name}."


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Turn a failure of the file system while writing `path` (a full disk, a quota, a read-only mount: an
    OSError, or a library's error saying so) into one line naming `path`; other errors pass unchanged."""
    try:
        yield
    except UserError:
        raise
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    except Exception as e:
        found = _IO_FAILURE.search(str(e))
        reason = found[0] if found else "No space left on device" if _full(Path(path)) else None
        if reason is None:
            raise
        raise UserError(f"cannot write {path}: {reason}") from None


def _full(path: Path) -> bool:
    """Whether the file system `path` is on has (next to) no space left: a library's error while writing there is
    then that (PyTorch's zip writer reports a full disk as a bad file position)."""
    folder = next((p for p in (path, *path.parents) if p.is_dir()), Path("."))
    stats = os.statvfs(folder)
    return stats.f_bavail * stats.f_frsize < 2**20


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call `write(tmp_path)` and move the result onto `path`."""
    path = Path(path)
    tmp = None
    try:
        with writing(path):  # (the temporary copy still there: a full disk shows as one)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temporary_name(path))
            os.close(fd)
            write(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.chmod(tmp, FILE_MODE)
            os.replace(tmp, path)
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_json(path: str | os.PathLike, obj: object) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def append_line(path: str | os.PathLike, line: str, durable: bool = False) -> None:
    """Add one line to a log (JSON lines; a line cut short by a crash is dropped by its reader); `durable`: on disk
    before this returns."""
    with writing(path), open(path, "a") as f:
        f.write(line + "\n")
        if durable:
            f.flush()
            os.fsync(f.fileno())
