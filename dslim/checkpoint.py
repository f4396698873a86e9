"""safetensors artifacts with JSON metadata, written atomically (temp file, then rename)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dslim.errors import UserError


def atomic_write(path: str | os.PathLike, write: callable) -> None:  # type: ignore[valid-type]
    """Call `write(tmp_path)` and move the result onto `path`: a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_tensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict) -> None:
    """Write tensors (made contiguous and de-aliased) with `metadata` JSON-encoded under the key `dslim`."""
    clean = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(clean, tmp, metadata={"dslim": json.dumps(metadata)}))


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and metadata of a file written by `save_tensors`."""
    if not Path(path).is_file():
        raise UserError(f"no such file: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("dslim", "null"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise UserError(f"{path} is not a readable safetensors file ({e})") from None
    if meta is None:
        raise UserError(f"{path} has no dslim metadata: it was not written by dslim")
    return tensors, meta


SUPERNET_FORMAT = "dslim.supernet/1"


def save_supernet(supernet, path: str | os.PathLike, **extra: object) -> None:  # type: ignore[no-untyped-def]
    """A stage artifact: the whole supernet (weights and every subnet's BN statistics) plus what rebuilds it.

    `extra` (recipe, stage, config...) is stored in the metadata as given; it must be JSON-serializable.
    """
    meta = {
        "format": SUPERNET_FORMAT,
        "arch": supernet.arch,
        "arch_kwargs": supernet.arch_kwargs,
        "subnets": {name: s.to_json() for name, s in supernet.named_subnets().items()},
        **extra,
    }
    save_tensors(supernet.state_dict(), path, meta)


def load_supernet(path: str | os.PathLike):  # type: ignore[no-untyped-def]
    """Rebuild a supernet from a stage artifact; returns `(supernet, metadata)`."""
    from dslim.models.registry import supernet_class

    tensors, meta = load_tensors(path)
    if meta.get("format") != SUPERNET_FORMAT:
        raise UserError(f"{path} is not a dslim supernet artifact (format {meta.get('format')!r})")
    net = supernet_class(meta["arch"])(**meta["arch_kwargs"])
    missing, unexpected = net.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise UserError(f"{path} does not fit {meta['arch']}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return net, meta
