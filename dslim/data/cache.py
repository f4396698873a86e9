"""Built-in data sets written once into the cache as an ImageFolder of PNG files, then read like any other folder.

A built-in set is a name (`--data.root digits`) and a function writing its files; `BUILT_IN` in `dslim.data.loader`
maps one to the other. Writing ordinary PNG files lets them go through exactly the pipeline ImageNet goes through
(DALI or PIL, crops, normalization), so the whole tool can be tried and tested on a CPU in minutes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from dslim.errors import UserError


def written_once(cache_dir: str | os.PathLike[str], name: str, write: Callable[[Path], None]) -> Path:
    """`<cache_dir>/<name>`, filled by `write(folder)` on first use.

    The folder is written into a temporary sibling and renamed into place: a crash never leaves a half-written
    folder, and when two processes race, the first rename wins and the other's identical copy is discarded.
    """
    root = Path(cache_dir).expanduser() / name
    if root.is_dir():
        return root
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root.parent))
    except OSError as e:
        raise UserError(f"cannot write the built-in data into {root.parent} ({e}); set --data.cache-dir") from None
    try:
        write(tmp)
        try:
            os.rename(tmp, root)
        except OSError:
            if not root.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
