"""Reading the originals' checkpoints safely: `torch.load(weights_only=True)` plus a minimal allow-list, and every
problem reported in one line (what was refused or missing, in which file), never PyTorch's advice to turn the
protection off."""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import tyro

from dslim.errors import UserError

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_GLOBAL = re.compile(r"GLOBAL ([\w.]+) was not an allowed global")


@dataclass(frozen=True)
class ImportOptions:
    """What every importer reads; each kind's `Options` adds its own fields (they become its command-line flags)."""

    path: tyro.conf.Positional[str]
    """The original's checkpoint file."""
    out: str
    """Where to write the dslim supernet artifact (`.safetensors`)."""
    overwrite: bool = False
    """Replace an existing --out file (never a run's own files: inside a run, only a new name in its `export/`)."""


def load_checkpoint(path: str | os.PathLike, allowed: Iterable[object] = ()) -> dict:
    """The dict a `torch.save` file holds, unpickling only tensors, containers, plain values and `allowed`."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"no such checkpoint: {path}")
    if p.stat().st_size == 0:
        raise UserError(f"{path} is empty: not a checkpoint")
    try:
        with torch.serialization.safe_globals(list(allowed)):
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = _ANSI.sub("", str(e))
        refused = _GLOBAL.search(text)
        if refused:
            raise UserError(
                f"{path} holds a pickled {refused[1]}, which dslim refuses to unpickle: only tensors and plain values "
                "are read from a checkpoint (weights_only=True), so nothing in the file is run"
            ) from None
        raise UserError(
            f"{path} is not a PyTorch checkpoint dslim can read (its pickle holds unsupported data)"
        ) from None
    except Exception as e:  # a damaged or foreign file makes the unpickler fail in many ways (EOF, Key, Index...)
        detail = _ANSI.sub("", str(e)).strip().splitlines()
        reason = f" ({detail[0][:200]})" if detail and len(detail[0]) > 3 else ""
        raise UserError(f"{path} is not a PyTorch checkpoint (torch.save file){reason}") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict")
    return obj


def strip_prefix(state: Mapping[str, object], prefix: str = "module.") -> dict[str, torch.Tensor]:
    """A state_dict without the `module.` prefix DataParallel adds; only its tensors."""
    return {k.removeprefix(prefix): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def take(state: Mapping[str, torch.Tensor], key: str, shape: tuple[int, ...], path: str | os.PathLike) -> torch.Tensor:
    """`state[key]`, which must exist with `shape`; a one-line `UserError` naming the key otherwise."""
    if key not in state:
        raise UserError(f"{path} lacks {key}: not the checkpoint this kind expects (or a different architecture)")
    value = state[key]
    if tuple(value.shape) != tuple(shape):
        raise UserError(f"{path}: {key} has shape {tuple(value.shape)}, expected {tuple(shape)}")
    return value


def no_leftovers(state: Mapping[str, object], used: set[str], path: str | os.PathLike) -> None:
    """Every entry of the checkpoint must have been mapped: an unexpected key means another architecture."""
    extra = sorted(k for k in state if k not in used)
    if extra:
        shown = ", ".join(extra[:3]) + (f" and {len(extra) - 3} more" if len(extra) > 3 else "")
        raise UserError(f"{path} has entries this architecture does not have: {shown}")
