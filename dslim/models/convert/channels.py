"""Which channels of a traced model must be sliced together: one pass over its graph with the example input.

Every node runs for real (so shapes and sizes are known) while its channel rule runs on the atoms of its operands
(`dslim.models.convert.atoms`): convolutions and linear layers start new atoms; a grouped convolution ties its input and
output channels block by block (a depthwise one, channel by channel); sums and channel-wise products tie their
operands; normalization, activations and pooling pass atoms through; concatenation, splits, permutes, flattening
and channel shuffles are run on the labels themselves; a reshape that splits a channel dimension ties the blocks it
makes. What has no rule, or breaks one (a reshape to a fixed channel count, a channel index, an unknown operation),
pins the atoms it touches: those channels stay at full width, and the reason is kept for `describe()`.

At the same time each node is written down as data (`ops`), with the slimmable layers, channel splits and channel
parameters it becomes; `groups` then turns the atoms into channel groups. The rules live in `layers` (modules and
layers), `rules` (functions and methods) and `structure` (reshaping, splitting, joining), all in
`dslim.models.convert`; this module holds the pass itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.fx as fx

from dslim.errors import UserError
from dslim.models.convert import atoms as A
from dslim.models.convert.ops import METHODS, encode, function_name


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


def _where(node: fx.Node) -> str:
    """`file:line` of the user's code that made `node` (its last frame outside torch and dslim)."""
    trace = (node.stack_trace or "").strip().splitlines()
    for line in reversed(trace):
        line = line.strip()
        if line.startswith("File ") and "/torch/" not in line and "/dslim/" not in line:
            path, _, rest = line.removeprefix("File ").partition(", line ")
            return f"{path.strip(chr(34)).rsplit('/', 1)[-1]}:{rest.split(',')[0]}"
    return node.name


class Walker:
    """Runs one traced graph on the example input, applying channel rules and writing nodes as data."""

    def __init__(self, analysis: Analysis, gm: fx.GraphModule, mode: str) -> None:
        self.an, self.gm, self.mode = analysis, gm, mode
        self.real: dict[str, object] = {}
        self.meta: dict[str, object] = {}
        self.nodes: list[dict] = []
        self.users: dict[str, int] = {n.name: len(n.users) for n in gm.graph.nodes}
        self.skip: set[str] = set()

    # -- helpers ------------------------------------------------------------------------------------------------
    def pin(self, meta: object, reason: str) -> None:
        """Pin every atom in `meta` (labels, sizes, nested tuples)."""
        if isinstance(meta, torch.Tensor):
            self.an.atoms.pin(meta, reason)
        elif isinstance(meta, Size):
            self.an.atoms.pin(meta.deps, reason)
        elif isinstance(meta, (tuple, list)):
            for m in meta:
                self.pin(m, reason)

    def args_of(self, node: fx.Node) -> tuple[tuple, dict, tuple, dict]:
        real = fx.node.map_arg((node.args, node.kwargs), lambda n: self.real[n.name])
        meta = fx.node.map_arg((node.args, node.kwargs), lambda n: self.meta[n.name])
        return real[0], real[1], meta[0], meta[1]

    def emit(self, node: fx.Node, op: str, target: str, args: object = (), kwargs: object = None) -> None:
        if kwargs is None:
            kwargs = {}
        name = lambda n: n.name if isinstance(n, fx.Node) else None  # noqa: E731
        stored = encode(args, name) if op == "output" else encode(list(args), name)
        self.nodes.append({"op": op, "name": node.name, "target": target, "args": stored,
                           "kwargs": {k: encode(v, name) for k, v in kwargs.items()}})  # fmt: skip

    # -- the pass -----------------------------------------------------------------------------------------------
    def run(self, example: torch.Tensor) -> object:
        inputs = self.an.inputs.setdefault(self.mode, {})
        for node in self.gm.graph.nodes:
            self.an.where[node.name] = _where(node)
            inputs[node.name] = [n.name for n in node.all_input_nodes]
            if node.op == "placeholder":
                if self.real:
                    raise UserError("dslim converts models whose forward takes one input (the image batch)")
                self.real[node.name] = example
                self.meta[node.name] = A.none(example.dim())
                self.emit(node, "input", "")
            elif node.op == "output":
                self.pin(fx.node.map_arg(node.args, lambda n: self.meta[n.name]), "the model's output")
                self.emit(node, "output", "", node.args[0])
                out = fx.node.map_arg(node.args[0], lambda n: self.real[n.name])
                if isinstance(out, torch.Tensor) and out.dim():
                    self.an.outputs = int(out.shape[-1])
                self.an.graphs[self.mode] = self.nodes
                self.an.labels[self.mode] = self.meta
                self.an.shapes[self.mode] = {k: _shapes(v) for k, v in self.real.items()}
                return out
            elif node.op == "get_attr":
                layers.get_attr(self, node)
            elif node.op == "call_module":
                layers.call_module(self, node)
            else:
                self.call(node)
        raise UserError("the traced graph has no output")

    def execute(self, node: fx.Node) -> object:
        args, kwargs, _, _ = self.args_of(node)
        if node.op == "call_module":
            return self.gm.get_submodule(node.target)(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        return node.target(*args, **kwargs)

    # -- functions and methods ----------------------------------------------------------------------------------
    def call(self, node: fx.Node) -> None:
        if node.op == "call_method":
            if node.target not in METHODS:
                raise UserError(f"{_where(node)}: dslim has no rule for the tensor method .{node.target}(); "
                                f"rewrite it with supported torch operations")  # fmt: skip
            name = f"Tensor.{node.target}"
        else:
            name = function_name(node.target)
            if name is None:
                label = getattr(node.target, "__qualname__", str(node.target))
                raise UserError(f"{_where(node)}: dslim cannot store a call to {label} as data; use torch operations "
                                f"(the model must reload without your source file)")  # fmt: skip
        kind = name.split(".")[-1]
        if kind in layers.FUNCTIONAL and layers.lifted(self, node, kind):
            return
        value = self.execute(node)
        self.real[node.name] = value
        args, kwargs, margs, mkwargs = self.args_of(node)
        meta = rules.rule(self, node, name, kind, args, kwargs, margs, mkwargs, value)
        self.meta[node.name] = meta
        if node.name not in self.skip:
            op, target = ("method", node.target) if node.op == "call_method" else ("function", name)
            self.emit(node, op, target, node.args, node.kwargs)

    def costed(self, node: fx.Node, fn: str, kind: str, atoms: np.ndarray | None) -> None:
        """Run this call through an `Op` module, so the complexity model sees (and costs) it."""
        path = f"dslim_ops.{node.name}"
        method = node.op == "call_method"
        spec = {"type": "Op", "args": {"fn": node.target if method else fn, "method": method, "cost": kind}}
        sites = {} if atoms is None else {"in": self.an.site(atoms)}
        self.an.layers.setdefault(path, Layer(path, spec, sites, {}))
        self.emit(node, "module", path, node.args, node.kwargs)
        self.skip.add(node.name)


# -- small helpers -------------------------------------------------------------------------------------------------
def _fetch(gm: fx.GraphModule, target: str) -> object:
    obj: object = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _flat(x: object) -> list:
    if isinstance(x, dict):
        return [v for item in x.values() for v in _flat(item)]
    if isinstance(x, (tuple, list)):
        return [v for item in x for v in _flat(item)]
    return [x]


def _none_like(value: object) -> object:
    if isinstance(value, torch.Tensor):
        return A.none(value.dim())
    if isinstance(value, (tuple, list)):
        return type(value)(_none_like(v) for v in value)
    return None


def _shapes(value: object) -> object:
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, (tuple, list)) and not isinstance(value, torch.Size):
        return [_shapes(v) for v in value]
    return None


def _line(labels: object, dim: int, value: object) -> np.ndarray:
    if isinstance(labels, torch.Tensor) and isinstance(value, torch.Tensor):
        return A.line(labels, dim, value.shape[dim])
    return np.zeros(0, np.int64)


from dslim.models.convert import layers, rules  # noqa: E402  (their rules use the types above)
