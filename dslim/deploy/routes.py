"""A route of a dynamic ONNX folder as one graph: its chain of graphs composed, compiled once, then reused.

onnxruntime pays at the edges of every graph it runs: on the CPU it converts tensors from NCHW to its blocked
layout for the convolutions inside and back at the edges, and cannot fuse across them. For one CIFAR ResNet block at
batch 64 the conversions take 1.3 ms of its 8.5 ms (docs/benchmarks.md), so a BlockDrop image that runs its kept
blocks as 30 graphs pays far more than the blocks it skips save. `OnnxDynamic` therefore runs the graphs of each
`chain` step (`dslim.deploy.runtime.fuse_chains`: a BlockDrop image's kept blocks and non-identity shortcuts) as
one graph per distinct chain, composed from the folder's own graphs (each tensor renamed per link), compiled on its
first use and kept while the weights of the compiled routes fit `cache_mb`; a chain that does not fit, or whose
graphs cannot be composed (control flow, local functions), runs graph by graph. Its outputs are those of the
graphs run in turn: composition only renames.

Needs the `onnx` package (no torch).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

Runner = Callable[[Sequence[Any]], list]


def compose(models: Sequence[Any]) -> Any | None:
    """One model running `models` in sequence (each one tensor in, one out, the next reading the previous one's
    output); None if any holds what renaming alone cannot carry over (subgraphs, local functions)."""
    import onnx
    from onnx import helper

    graphs = [m.graph for m in models]
    if any(m.functions for m in models) or any(g.sparse_initializer for g in graphs):
        return None
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for g in graphs for n in g.node
           for a in n.attribute):  # fmt: skip
        return None
    if any(len(g.input) != 1 or len(g.output) != 1 for g in graphs):
        return None
    nodes, initializers, current = [], [], "input"
    for i, g in enumerate(graphs):
        out = "output" if i == len(graphs) - 1 else f"{i}/{g.output[0].name}"
        names = {g.input[0].name: current, g.output[0].name: out, "": ""}

        def rename(name: str, i: int = i, names: dict = names) -> str:
            return names.get(name, f"{i}/{name}")

        for node in g.node:
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            copy.name = f"{i}/{node.name}"
            copy.input[:] = [rename(n) for n in node.input]
            copy.output[:] = [rename(n) for n in node.output]
            nodes.append(copy)
        for tensor in g.initializer:
            copy = onnx.TensorProto()
            copy.CopyFrom(tensor)
            copy.name = rename(tensor.name)
            initializers.append(copy)
        current = out
    first, last = graphs[0].input[0], graphs[-1].output[0]
    inp, out = onnx.ValueInfoProto(), onnx.ValueInfoProto()
    inp.CopyFrom(first)
    inp.name = "input"
    out.CopyFrom(last)
    out.name = "output"
    if not nodes:
        nodes.append(helper.make_node("Identity", ["input"], ["output"]))
    graph = helper.make_graph(nodes, "route", [inp], [out], initializers)
    return helper.make_model(graph, opset_imports=models[0].opset_import, ir_version=models[0].ir_version)


def weight_bytes(model: Any) -> int:
    """Bytes of a model's initializers (what a compiled session holds a copy of)."""
    import numpy as np
    from onnx import helper

    return sum(int(np.prod(t.dims)) * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
               for t in model.graph.initializer)  # fmt: skip


class Routes:
    """Compiled chains, each made on first use while their weights fit `cache_mb`.

    `model(name)`: a graph's ONNX model; `compile(model) -> runner`; `graph(name) -> runner`: one graph's runner.
    `stats`: routes compiled, calls answered by a compiled route, calls run graph by graph.
    """

    def __init__(self, model: Callable[[str], Any], compile: Callable[[Any], Runner], graph: Callable[[str], Runner],
                 cache_mb: float) -> None:  # fmt: skip
        self.model, self.compile, self.graph = model, compile, graph
        self.room = cache_mb * 2**20
        self.compiled: dict[tuple[str, ...], Runner | None] = {}
        self.stats = {"compiled": 0, "hits": 0, "graph_by_graph": 0, "bytes": 0}

    def run(self, chain: tuple[str, ...], inputs: Sequence[Any]) -> list:
        if chain not in self.compiled:
            self.compiled[chain] = self._make(chain)
        runner = self.compiled[chain]
        if runner is not None:
            self.stats["hits"] += 1
            return runner(inputs)
        self.stats["graph_by_graph"] += 1
        xs = list(inputs)
        for name in chain:
            xs = self.graph(name)(xs)
        return xs

    def _make(self, chain: tuple[str, ...]) -> Runner | None:
        if len(chain) == 1:
            return self.graph(chain[0])
        model = compose([self.model(name) for name in chain])
        if model is None:
            return None
        size = weight_bytes(model)
        if self.stats["bytes"] + size > self.room:
            return None
        self.stats["compiled"] += 1
        self.stats["bytes"] += size
        return self.compile(model)
