"""What the channel analysis records, shared by the pass (`channels`) and its rules (`layers`, `rules`, `structure`).

`Size` is an integer that measures channels, `Layer` a slimmable layer found in the graph, `Analysis` everything one
pass over the traced graph(s) found; `Pass` is what a rule may ask of the pass running it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.fx as fx

from dslim.models.convert import atoms as A

LIBRARIES = tuple(str(p) + "/" for p in (Path(torch.__file__).resolve().parent, Path(__file__).resolve().parents[2]))
"""Folders whose frames are not the user's code (by folder, not by name: a user's file may sit under `.../dslim/`)."""


@dataclass
class Size:
    """An integer that is a size: `atoms` when it is the size of a channel dimension, `deps` the atoms it depends on
    (a size derived from channel counts changes with the width)."""

    atoms: np.ndarray | None
    deps: np.ndarray


@dataclass
class Layer:
    """A slimmable layer found in the graph: its module spec and the atoms of its channel dimensions."""

    path: str
    spec: dict
    sites: dict[str, int]
    """Layout name (`in`, `out`) -> index into `Analysis.sites`."""
    source: dict[str, torch.Tensor]
    """The user's tensors it starts from (weight, bias, running statistics, ...)."""
    origin: np.ndarray | None = None
    """Its output atoms, if it makes channels (conv, linear)."""


@dataclass
class Analysis:
    """What one pass over the graph(s) found."""

    atoms: A.Atoms = field(default_factory=A.Atoms)
    sites: list[object] = field(default_factory=list)
    """Atom arrays (or, for a channel parameter, its label tensor) that become stored layouts."""
    layers: dict[str, Layer] = field(default_factory=dict)
    graphs: dict[str, list[dict]] = field(default_factory=dict)
    """Stored nodes per mode (`eval`, `train`)."""
    labels: dict[str, dict[str, object]] = field(default_factory=dict)
    """Per mode, the channel meta of each node's value (for the shape check)."""
    shapes: dict[str, dict[str, object]] = field(default_factory=dict)
    """Per mode, each node's value shapes at the example input."""
    split_parts: list[np.ndarray] = field(default_factory=list)
    """Atoms of every part a channel split makes (ranks keep the parts balanced)."""
    where: dict[str, str] = field(default_factory=dict)
    """Node name -> where it comes from in the user's code."""
    inputs: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    """Per mode, the nodes each node reads."""
    outputs: int = 0
    """Size of the last dimension of the model's output (its classes)."""

    def site(self, atoms: object) -> int:
        self.sites.append(atoms)
        return len(self.sites) - 1


class Pass(Protocol):
    """The pass a rule runs in (`dslim.models.convert.channels.Walker`)."""

    an: Analysis
    gm: fx.GraphModule
    real: dict[str, object]
    meta: dict[str, object]
    nodes: list[dict]
    skip: set[str]

    def pin(self, meta: object, reason: str) -> None: ...

    def args_of(self, node: fx.Node) -> tuple[tuple, dict, tuple, dict]: ...

    def emit(self, node: fx.Node, op: str, target: str, args: object = (), kwargs: object = None) -> None: ...

    def execute(self, node: fx.Node) -> object: ...

    def costed(self, node: fx.Node, fn: str, kind: str, atoms: np.ndarray | None) -> None: ...

    def op_path(self, node: fx.Node) -> str: ...


def source_of(node: fx.Node) -> str:
    """`file:line` of the user's code that made `node` (its last frame outside torch and dslim)."""
    trace = (node.stack_trace or "").strip().splitlines()
    for line in reversed(trace):
        line = line.strip()
        if line.startswith("File "):
            path, _, rest = line.removeprefix("File ").partition(", line ")
            path = path.strip(chr(34))
            if not str(Path(path).resolve()).startswith(LIBRARIES):
                return f"{path.rsplit('/', 1)[-1]}:{rest.split(',')[0]}"
    return node.name


# -- helpers -------------------------------------------------------------------------------------------------
def fetch(gm: fx.GraphModule, target: str) -> object:
    obj: object = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def flat(x: object) -> list:
    if isinstance(x, dict):
        return [v for item in x.values() for v in flat(item)]
    if isinstance(x, (tuple, list)):
        return [v for item in x for v in flat(item)]
    return [x]


def none_like(value: object) -> object:
    if isinstance(value, torch.Tensor):
        return A.none(value.dim())
    if isinstance(value, (tuple, list)):
        return type(value)(none_like(v) for v in value)
    return None


def shapes_of(value: object) -> object:
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, (tuple, list)) and not isinstance(value, torch.Size):
        return [shapes_of(v) for v in value]
    return None


def line_of(labels: object, dim: int, value: object) -> np.ndarray:
    if isinstance(labels, torch.Tensor) and isinstance(value, torch.Tensor):
        return A.line(labels, dim, value.shape[dim])
    return np.zeros(0, np.int64)
