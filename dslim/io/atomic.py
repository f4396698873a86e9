"""Files written atomically: a temporary sibling, flushed to disk, then renamed onto the target.

A crash (or SIGKILL) at any moment leaves either the old file or the new one, never a half-written one; a reader
never sees a partial file; concurrent writers of the same file each rename a complete copy. Files get the
permissions the user's umask gives a new file (a temporary file alone would be private, 0600).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()
_DIR_MODE = 0o777 & ~_umask()


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call `write(tmp_path)` and move the result onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_dir(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_dir)` to fill a temporary sibling folder, then move it onto `path` (a folder of files that
    belong together, such as a dynamic model's graphs): readers see the old folder or the new one, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".tmp-{path.name}."))
    old = path.parent / f".tmp-{path.name}.old-{os.getpid()}"
    try:
        write(tmp)
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb+") as handle:
                    os.fsync(handle.fileno())
        os.chmod(tmp, _DIR_MODE)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        for leftover in (tmp, old):
            if leftover.exists():
                shutil.rmtree(leftover)


def write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_json(path: str | os.PathLike, obj: object) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def is_temporary(path: Path) -> bool:
    """Whether `path` is a leftover of an interrupted `atomic_write` (or checkpoint folder)."""
    return path.name.startswith(".") and (path.name.endswith(".tmp") or path.name.startswith(".tmp-"))
