"""safetensors artifacts with JSON metadata: written atomically, checked before anything is built from them.

A file dslim reads may come from anywhere. Its metadata says what to build (an architecture and its constructor
arguments); `build_checked` first builds that on PyTorch's `meta` device, which allocates no memory, and loads the
file's tensor shapes into it, so an absurd or inconsistent file (2,000,000 classes, channels its tensors do not
have, unknown arguments) is refused with one line before a single real tensor is allocated for it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import safetensors.torch
import torch
from safetensors import safe_open
from torch import nn

from dslim.errors import UserError
from dslim.io.atomic import write_bytes
from dslim.io.readers import expect, parse
from dslim.models.registry import supernet_class
from dslim.subnet import Subnet

SUPERNET_FORMAT = "dslim.supernet/1"
SUPERNET_META = {"format": str, "arch": str, "arch_kwargs": dict, "subnets": {str: dict}, "extra_names?": [str],
                 "router_trained?": bool}  # fmt: skip
"""The metadata of a stage artifact (what `save_supernet` writes besides a stage's own `extra`)."""


def save_tensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict) -> None:
    """Write tensors (made contiguous and de-aliased) with `metadata` JSON-encoded under the key `dslim`.

    Serialized in memory and written by Python, so that a full disk is an OSError like any other (one line)."""
    clean = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    data = safetensors.torch.save(clean, metadata={"dslim": json.dumps(metadata)})
    del clean
    write_bytes(path, data)


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and metadata (a JSON object) of a file written by `save_tensors`."""
    if not Path(path).is_file():
        raise UserError(f"no such file: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("dslim")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise UserError(f"{path} is not a readable safetensors file ({str(e).splitlines()[0]})") from None
    if raw is None:
        raise UserError(f"{path} has no dslim metadata: it was not written by dslim")
    return tensors, parse(raw, f"{path}: its dslim metadata", dict)  # type: ignore[return-value]


def arch_class(meta: dict, path: str | os.PathLike) -> type:
    """The registered architecture a file's metadata names; a `UserError` naming the file otherwise."""
    expect(meta, {"arch": str}, f"{path}: its dslim metadata")
    try:
        return supernet_class(meta["arch"])
    except UserError as e:
        raise UserError(f"{path}: {e}") from None


def build_checked(
    build: Callable[[], nn.Module], tensors: dict[str, torch.Tensor], path: str | os.PathLike, what: str
) -> nn.Module:
    """`build()` as a real module holding `tensors`, after checking on the `meta` device that they fit exactly."""
    try:
        with torch.device("meta"):
            skeleton = build()
            skeleton.load_state_dict({k: torch.empty(v.shape, dtype=v.dtype) for k, v in tensors.items()})
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    except (RuntimeError, TypeError, ValueError, KeyError, AssertionError) as e:
        detail = " ".join(str(e).split())[:300]
        raise UserError(f"{path} does not describe a valid {what} ({type(e).__name__}: {detail})") from None
    del skeleton
    net = build()
    net.load_state_dict(tensors)
    return net


def save_supernet(supernet, path: str | os.PathLike, **extra: object) -> None:  # type: ignore[no-untyped-def]
    """A stage artifact: the whole supernet (weights and every subnet's BN statistics) plus what rebuilds it.

    `extra` (recipe, stage, config...) is stored in the metadata as given; it must be JSON-serializable.
    """
    meta = {
        "format": SUPERNET_FORMAT,
        "arch": supernet.arch,
        "arch_kwargs": supernet.arch_kwargs,
        "subnets": {name: s.to_json() for name, s in supernet.named_subnets().items()},
        "extra_names": list(supernet.extra_names),
        "router_trained": supernet.router_trained,
        **extra,
    }
    save_tensors(supernet.state_dict(), path, meta)


def load_supernet(path: str | os.PathLike, arch: str | None = None):  # type: ignore[no-untyped-def]
    """Rebuild a supernet from a stage artifact, checked first; returns `(supernet, metadata)`.

    `arch`: the architecture the caller expects (a run's model); another one is refused.
    """
    tensors, meta = load_tensors(path)
    if meta.get("format") != SUPERNET_FORMAT:
        raise UserError(f"{path} is not a dslim supernet artifact (format {meta.get('format')!r})")
    return supernet_from(tensors, meta, path, arch), meta


def supernet_from(tensors: dict[str, torch.Tensor], meta: dict, path: str | os.PathLike, arch: str | None = None):  # type: ignore[no-untyped-def]
    """The supernet a supernet artifact's `tensors` and `meta` (read by `load_tensors`) describe, checked first."""
    expect(meta, SUPERNET_META, f"{path}: its dslim metadata")
    cls = arch_class(meta, path)
    if arch is not None and cls.arch != arch:
        raise UserError(f"{path} holds a {cls.arch}, but this run's model is {arch}")
    net = build_checked(lambda: cls(**meta["arch_kwargs"]), tensors, path, cls.arch)
    subnets, extra = meta["subnets"], meta.get("extra_names", [])
    if not all(n in subnets for n in extra):
        raise UserError(f"{path}: metadata field 'extra_names' must list names of its 'subnets'")
    net.name_subnets({n: Subnet.from_json(subnets[n], f"{path}: subnet {n!r}") for n in extra})
    net.router_trained = meta.get("router_trained", False)
    return net
