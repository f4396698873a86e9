"""Fixtures shared by the test files."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# As `import dslim` does for every command: torch's OpenMP threads sleep instead of spinning between operations. It
# must be set before torch loads (a test module may import torch before dslim); spinning threads on a busy 2-core
# machine made single timings 30x slower (tests/test_latency.py compares timings).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Under pytest-xdist (`-n 2` in pyproject.toml's addopts) two workers share the machine's two cores: each computes
# on one thread, as the dslim subprocesses the tests start do.
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for a dslim subprocess: this checkout importable, one thread (2-core CI machines)."""
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


PYTHON = sys.executable


@pytest.fixture(scope="session")
def digits_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache directory holding the built-in digits, written once per test session."""
    from dslim.data import digits_root

    cache = tmp_path_factory.mktemp("digits-cache")
    digits_root(cache)
    return cache


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files holding a `slow` test run first: under `--dist loadfile` the long files start at once and the short
    ones fill in around them, rather than one long file running alone at the end."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)  # stable: each file's own order is kept


class UserFiles:
    """A user's own files, planted where dslim will write, to check that dslim leaves every one as it was.

    Among them, names like those of dslim's temporaries (`.tmp-*` folders, `.*.tmp` files) and of its outputs
    (`config.json`, `model.safetensors`), nested several folders deep: only what dslim wrote may be removed or
    replaced."""

    NAMES = (
        "notes.txt",
        ".hidden",
        "config.json",
        ".tmp-mine/draft.txt",
        ".results.json.tmp",
        ".model.safetensors.x1y2.tmp",
        "deep/er/and/deeper/.tmp-cache/.tmp-inner/.data.tmp",
        "deep/er/and/deeper/model.safetensors",
        "deep/.tmp-ckpt-000000003/trainer.json",
    )

    def __init__(self) -> None:
        self.files: dict[Path, bytes] = {}
        self.roots: list[Path] = []

    def plant(self, folder: Path, names: tuple[str, ...] = NAMES) -> Path:
        """Fill `folder` (made if needed) with the user's files; returns it."""
        for i, name in enumerate(names):
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            content = f"{name}: the user's own bytes {i}\n".encode() + bytes(range(256))
            path.write_bytes(content)
            self.files[path] = content
        self.roots.append(folder)
        return folder

    def check(self) -> None:
        """Every planted file is still there, byte for byte."""
        for path, content in self.files.items():
            assert path.is_file(), f"{path} was removed"
            assert path.read_bytes() == content, f"{path} was changed"


@pytest.fixture
def user_files() -> UserFiles:
    """Plant a user's files with `user_files.plant(folder)`; they are checked when the test ends."""
    files = UserFiles()
    yield files
    files.check()
