"""Guarded outputs: dslim only ever removes or replaces what it wrote itself.

Every folder dslim writes as a whole (a run directory, an exported ONNX folder) holds a marker, `.dslim`, saying
what it is and, for a folder dslim may replace, which files it put there. Every path a command is told to write is
checked before any work (`check_output`, `check_run_dir`), with these rules:
- a path that does not exist yet may be written (its folders are made);
- an existing file is replaced only when the user says `--overwrite`; an existing folder only when dslim wrote it
  and it holds nothing else (and `--overwrite` is given); a folder dslim did not write, never;
- nothing inside a run directory (a run's config, artifacts, checkpoints) is another command's output, with or
  without `--overwrite`, except a new file or folder in the run's `export/`;
- a run directory is a new or empty folder, or a run (to continue it), never inside another run.
Temporary names carry dslim's own prefix (`dslim.io.atomic.TEMPORARY`): `sweep` removes only those, only in the
folders it is given (where dslim writes its temporaries), never a user's `.tmp` files.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from dslim.errors import UserError
from dslim.io.atomic import DIR_MODE, is_temporary, temporary_name, write_json, writing
from dslim.io.readers import MARKER_SCHEMA, RUN_RECORD, read_json

MARKER = ".dslim"
"""The marker file of a folder dslim wrote."""
FORMAT = "dslim.folder/1"


def marker(folder: Path) -> dict | None:
    """The marker of `folder` (`{"format", "kind", "files"}`), or None when there is none dslim wrote."""
    path = folder / MARKER
    if not path.is_file():
        return None
    try:
        found = read_json(path, "folder marker", MARKER_SCHEMA, max_bytes=2**20)
    except UserError:
        return None
    return found if found["format"] == FORMAT else None  # type: ignore[index, return-value]


def mark(folder: Path, kind: str, files: Sequence[str] = ()) -> None:
    """Record that dslim wrote `folder` (as `kind`), with `files` (paths relative to it)."""
    write_json(folder / MARKER, {"format": FORMAT, "kind": kind, "files": sorted(files)})


def is_run(folder: Path) -> bool:
    """Whether `folder` is a run directory: marked as one, or (a run of an earlier dslim, before runs were marked)
    holding the config.json record `dslim.train` writes."""
    found = marker(folder)
    if found is not None:
        return found["kind"] == "run"
    record = folder / "config.json"
    if not record.is_file():
        return False
    try:
        read_json(record, "run record", RUN_RECORD)
    except UserError:
        return False
    return True


def enclosing_run(path: Path) -> Path | None:
    """The run directory `path` is in (or is), if any."""
    path = Path(os.path.abspath(path))
    return next((p for p in (path, *path.parents) if p.is_dir() and is_run(p)), None)


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir() and p.name != MARKER}


def _replaceable(path: Path, option: str) -> None:
    """An existing folder may be replaced only if dslim wrote it and it holds nothing dslim did not put there."""
    found = marker(path)
    if found is None or found["kind"] == "run":
        raise UserError(f"{option} {path} is a folder not written by dslim (or a run): dslim never replaces it; give "
                        "a new folder name")  # fmt: skip
    foreign = sorted(_files(path) - set(found["files"]))
    if foreign:
        shown = ", ".join(foreign[:3]) + (" ..." if len(foreign) > 3 else "")
        raise UserError(f"{option} {path} holds files dslim did not write there ({shown}): move them out, or give a "
                        "new folder name")  # fmt: skip


def check_output(
    path: str | os.PathLike, *, overwrite: bool, folder: bool = False, option: str = "--out", own: bool = False
) -> None:
    """Refuse, in one line and before any work, to write `path` (a file; with `folder`, a folder) unless the
    module's rules allow it. `own`: `path` is a file dslim itself keeps up to date (a card beside its model), which
    may be replaced without `--overwrite`."""
    path = Path(path)
    run = enclosing_run(path)
    if run is not None and not (Path(os.path.abspath(path)).parent == run / "export" and not path.exists()):
        raise UserError(f"{option} {path} is inside the run {run}: a run's files are its own; give a new name in "
                        f"{run / 'export'}, or a path outside the run")  # fmt: skip
    if path.exists():
        if path.is_dir() != folder:
            kind = "a folder" if path.is_dir() else "a file"
            raise UserError(f"{option} {path} is {kind}; give a {'folder' if folder else 'file'} name")
        if folder:
            check_folder(path, option)
        if not (overwrite or own):
            raise UserError(f"{option} {path} exists; give --overwrite to replace it, or another name")
    parent = next(p for p in Path(os.path.abspath(path)).parents if p.exists())
    if not parent.is_dir():
        raise UserError(f"{option} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path} cannot be written: {parent} is not writable; give another path")


def check_run_dir(root: str | os.PathLike) -> bool:
    """Refuse, in one line, a `--out-dir` that cannot be a run directory; returns whether it already is a run."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise UserError(f"--out-dir {root} is a file, not a directory; choose another --out-dir")
    outer = enclosing_run(Path(os.path.abspath(root)).parent)
    if outer is not None:
        raise UserError(f"--out-dir {root} is inside the run {outer}; choose a folder outside it")
    if root.is_dir():
        if is_run(root):
            return True
        if any(not is_temporary(p) for p in root.iterdir()):  # (a first run killed while marking its folder)
            raise UserError(f"--out-dir {root} holds files and is not a dslim run: a run is written only into a new "
                            "or empty folder (or its own, to continue it); choose another --out-dir")  # fmt: skip
    parent = next(p for p in Path(os.path.abspath(root)).parents if p.exists()) if not root.exists() else root
    if not parent.is_dir():
        raise UserError(f"--out-dir {root} cannot be made: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"--out-dir {root} cannot be written: {parent} is not writable; choose a writable --out-dir")
    return False


def check_folder(path: str | os.PathLike, option: str = "output") -> None:
    """A folder may be written at `path`: nothing is there, or a folder dslim wrote that holds nothing else."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path} is a file; a folder is written there")
    if path.exists():
        _replaceable(path, option)


def write_folder(path: str | os.PathLike, kind: str, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` to fill a temporary sibling folder, mark it as `kind` with the files written, then move it
    onto `path` (replacing a folder only as `check_folder` allows): readers see the old folder or the new one."""
    path = Path(path)
    check_folder(path)
    tmp, old = None, path.parent / f"{temporary_name(path)}old-{os.getpid()}"
    try:
        with writing(path):  # (the temporary folder still there: a full disk shows as one)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=temporary_name(path)))
            write(tmp)
            files = _files(tmp)
            for name in files:
                with open(tmp / name, "rb+") as handle:
                    os.fsync(handle.fileno())
            mark(tmp, kind, sorted(files))
            os.chmod(tmp, DIR_MODE)
            if path.exists():
                check_folder(path)
                os.replace(path, old)
            os.replace(tmp, path)
    finally:
        for leftover in (tmp, old):
            if leftover is not None and leftover.exists():
                shutil.rmtree(leftover)


def sweep(folders: Iterable[Path]) -> None:
    """Remove dslim's temporaries directly inside each of `folders` (not below them)."""
    for folder in folders:
        if folder.is_dir():
            for entry in folder.iterdir():
                if is_temporary(entry):
                    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
