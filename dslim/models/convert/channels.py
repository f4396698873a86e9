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

import numpy as np
import torch
import torch.fx as fx

from dslim.errors import UserError
from dslim.models.convert import atoms as A
from dslim.models.convert import layers, rules
from dslim.models.convert.analysis import Analysis, Layer, Size, shapes_of, source_of
from dslim.models.convert.ops import METHODS, encode, function_name

__all__ = ["Analysis", "Layer", "Size", "Walker"]


class Walker:
    """Runs one traced graph on the example input, applying channel rules and writing nodes as data."""

    def __init__(self, analysis: Analysis, gm: fx.GraphModule, mode: str) -> None:
        self.an, self.gm, self.mode = analysis, gm, mode
        self.real: dict[str, object] = {}
        self.meta: dict[str, object] = {}
        self.nodes: list[dict] = []
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
            self.an.where[node.name] = source_of(node)
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
                self.an.shapes[self.mode] = {k: shapes_of(v) for k, v in self.real.items()}
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
                raise UserError(f"{source_of(node)}: dslim has no rule for the tensor method .{node.target}(); "
                                f"rewrite it with supported torch operations")  # fmt: skip
            name = f"Tensor.{node.target}"
        else:
            name = function_name(node.target)
            if name is None:
                label = getattr(node.target, "__qualname__", str(node.target))
                raise UserError(f"{source_of(node)}: dslim cannot store a call to {label} as data; use torch "
                                f"operations (the model must reload without your source file)")  # fmt: skip
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

    def op_path(self, node: fx.Node) -> str:
        """Where a module made for one call of this graph lives (each traced mode has its own)."""
        return f"dslim_ops.{self.mode}_{node.name}"

    def costed(self, node: fx.Node, fn: str, kind: str, atoms: np.ndarray | None) -> None:
        """Run this call through an `Op` module, so the complexity model sees (and costs) it."""
        path = self.op_path(node)
        method = node.op == "call_method"
        spec = {"type": "Op", "args": {"fn": node.target if method else fn, "method": method, "cost": kind}}
        sites = {} if atoms is None else {"in": self.an.site(atoms)}
        self.an.layers.setdefault(path, Layer(path, spec, sites, {}))
        self.emit(node, "module", path, node.args, node.kwargs)
        self.skip.add(node.name)
