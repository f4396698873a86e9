"""ONNX export: a static subnet as one graph, a dynamic model as a folder of static graphs plus its routing program.

A static subnet is exported from `dslim.extract` (standard layers, physically sliced weights), so its graph holds
only the subnet's weights; the batch axis of every input and output is dynamic. A dynamic model (a
`dslim.models.routing.Dynamic`: DS-Net's gate, BlockDrop's policy) cannot be one graph: its decisions depend on the
input, which ONNX exports only through prototype control flow. So each graph of its `export_plan()` (e.g. the
shared prefix with the gate, one tail per route) is exported alone from `dslim.deploy.extraction.extract_graphs`,
and `routing.json` (the plan's routing program plus each graph's file, inputs, outputs and channels) tells a runtime
how to route; `dslim.deploy.runtime` is the reference runner. The folder is written whole or not at all.

Exporters: `dynamo` (`torch.export`, PyTorch's default since 2.9) or `torchscript` (the older tracer: deprecated,
but many times faster on a CPU). Both fold BatchNorm into the convolutions in eval mode.
"""

from __future__ import annotations

import inspect
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from dslim.deploy.extraction import extract, extract_graphs
from dslim.deploy.runtime import ROUTING, ROUTING_FORMAT, execute
from dslim.errors import UserError
from dslim.io import write_json
from dslim.io.atomic import FILE_MODE, temporary_name, writing
from dslim.io.outputs import check_folder, write_folder
from dslim.models.base import Supernet
from dslim.subnet import Subnet

Exporter = Literal["dynamo", "torchscript"]
OPSET = 18
INLINE_BYTES = 3 << 29
"""Weights up to this size (1.5 GiB) are stored inside the graph's file; an ONNX file cannot exceed 2 GiB, so a
larger model's weights go to a file beside it, `<name>.onnx.data`."""


def require(exporter: Exporter) -> None:
    """ONNX export needs the `onnx` extra (onnx, onnxscript for the dynamo exporter); say so before any work."""
    import importlib.util

    needed = ["onnx", "onnxscript"] if exporter == "dynamo" else ["onnx"]
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"ONNX export needs {', '.join(missing)}: pip install 'dslim[onnx]'")


def export_module(
    module: nn.Module,
    examples: Sequence[torch.Tensor],
    input_names: Sequence[str],
    output_names: Sequence[str],
    path: str | os.PathLike,
    exporter: Exporter = "dynamo",
) -> None:
    """`module(*examples)` as an ONNX graph at `path` (atomically), with a dynamic batch axis (axis 0) on every input
    and output. `examples` need a batch of at least 2 (a batch of 1 would be specialized)."""
    examples = tuple(examples)

    def write(tmp: str) -> None:
        quiet = logging.getLogger("torch.onnx")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # per-operator registration notices (torchvision ops) are not for users
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if exporter == "dynamo":
                    batch = torch.export.Dim("batch", min=1, max=1 << 20)
                    shapes = tuple({0: batch} for _ in examples)
                    params = inspect.signature(module.forward).parameters.values()
                    varargs = any(p.kind is p.VAR_POSITIONAL for p in params)  # a graph's `forward(*inputs)`
                    dynamic = {"dynamic_shapes": (shapes,) if varargs else shapes, "optimize": True, "verbose": False}
                else:
                    dynamic = {"dynamic_axes": {name: {0: "batch"} for name in (*input_names, *output_names)}}
                torch.onnx.export(module, examples, tmp, input_names=list(input_names),
                                  output_names=list(output_names), opset_version=OPSET, dynamo=exporter == "dynamo",
                                  external_data=_weight_bytes(module) > INLINE_BYTES, **dynamic)  # fmt: skip
        finally:
            quiet.setLevel(level)

    _write_with_weights(Path(path), write)


def _weight_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def _write_with_weights(path: Path, write: Callable[[str], None]) -> None:
    """`write(file)` into a temporary folder, under `path`'s own name, then every file it made moved beside `path`,
    `path` last. An exporter names a weights file after the graph's file and records that name in the graph: written
    as a temporary sibling, the graph would refer to a temporary name, which `dslim.io.outputs.sweep` removes and a
    user copying `path` would not know to take. A crash leaves only the temporary folder (swept) or, before the
    graph moves, a weights file nothing refers to yet."""
    tmp = None
    try:
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=temporary_name(path)))
            write(str(tmp / path.name))
            for made in sorted(tmp.iterdir(), key=lambda f: f.name == path.name):  # the graph last
                with open(made, "rb+") as f:
                    os.fsync(f.fileno())
                os.chmod(made, FILE_MODE)
                os.replace(made, path.parent / made.name)
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp)


def _image(input_size: int) -> torch.Tensor:
    return torch.randn(2, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))


def export_static(
    supernet: Supernet, subnet: Subnet, path: str | os.PathLike, input_size: int, exporter: Exporter = "dynamo"
) -> nn.Module:
    """`subnet` as one ONNX graph `image -> logits` holding only its sliced weights; returns the module exported."""
    return export_extracted(extract(supernet, subnet), path, input_size, exporter)


def export_extracted(
    model: nn.Module, path: str | os.PathLike, input_size: int, exporter: Exporter = "dynamo"
) -> nn.Module:
    """A module `extract` made, in float32, as one ONNX graph `image -> logits`; returns it."""
    model = model.float()
    export_module(model, (_image(input_size),), ["image"], ["logits"], path, exporter)
    return model


def export_dynamic(
    supernet: Supernet,
    folder: str | os.PathLike,
    input_size: int,
    exporter: Exporter = "dynamo",
    also: Callable[[Path], object] | None = None,
) -> dict:
    """A dynamic model as `folder/<graph>.onnx` for every graph of its export plan and `folder/routing.json`
    (`also(tmp)` adds files, such as its card, before the folder moves into place); returns the routing program
    written. An existing `folder` is replaced only if dslim wrote it (`dslim.io.outputs`)."""
    if not supernet.is_dynamic:
        raise UserError(f"{supernet.arch} does not route per input: export a subnet instead")
    check_folder(folder)
    plan = supernet.export_plan()  # type: ignore[attr-defined]
    modules = {name: m.float() for name, m in extract_graphs(supernet, plan.graphs).items()}
    examples: dict[str, list[np.ndarray]] = {}

    def run(name: str, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        examples.setdefault(name, list(inputs))
        with torch.no_grad():
            out = modules[name](*(torch.from_numpy(x) for x in inputs))
        return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]

    execute(plan.program, run, _image(input_size).numpy(), every_graph=True)  # an example input for every graph
    graphs = {
        name: {"file": f"{name}.onnx", "inputs": list(spec.inputs), "outputs": list(spec.outputs),
               "subnet": spec.subnet.to_json()}
        for name, spec in plan.graphs.items()
    }  # fmt: skip
    program = {"format": ROUTING_FORMAT, **plan.program, "graphs": graphs, "input_size": input_size}

    def write(tmp: Path) -> None:
        for name, spec in plan.graphs.items():
            inputs = [torch.from_numpy(x) for x in examples[name]]
            export_module(modules[name], inputs, spec.inputs, spec.outputs, tmp / graphs[name]["file"], exporter)
        write_json(tmp / ROUTING, program)
        if also is not None:
            also(tmp)

    write_folder(folder, "onnx-model", write)
    return program
