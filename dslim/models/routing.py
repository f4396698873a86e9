"""Per-input routing that saves real compute: group a batch by decision, run each group smaller, scatter back.

A dynamic model decides something per image: DS-Net a route (a subnet) after its shared prefix, BlockDrop a keep
bit per block. Masking the skipped work (as both originals did in batches) saves nothing; running every image
alone saves compute but loses batching. `dispatch` does neither: the images that made the same decision run
together, physically at that decision's size, and their outputs return to their places in the batch.

A supernet that routes implements `Dynamic`; evaluation (the `dynamic` row of eval.json), dynamic export
(`RoutedNet`, rebuilt by `load_subnet`; ONNX graphs and their routing program), latency tables and
`scripts/bench_dynamic.py` rely on this protocol only.

Runtimes such as ONNX cannot branch on the input, so a dynamic model is also described as static graphs plus a
routing program (`ExportPlan`): each graph is one method of the network built at one subnet's widths, with only
those weights; the program says which graph runs on which images. Its JSON form (`routing.json`):

    {"input": "image",
     "steps": [{"run": "prefix", "inputs": ["image"], "outputs": ["features", "squeezed", "gate"]},
               {"decide": "route", "from": "gate", "rule": "argmax"},
               {"dispatch": "route", "graphs": ["route-0", "route-1"], "inputs": [...], "outputs": ["logits"]}],
     "outputs": {"logits": "logits", "decisions": "route"},
     "routes": {"uniform-0": {"decisions": {"route": 0}, "subnet": {...}}, "uniform-1": ...}}

`run` runs a graph on the whole batch; `decide` turns a tensor into one integer decision per image (`argmax` over
its second axis) or per image and column (`threshold`: 1 where the value exceeds `value`; `at_least`: 1 where it
is at least `value`, e.g. BlockDrop's keep probabilities against 0.5); `dispatch` groups the images by a decision
(`column` picks one column of a per-column decision) and runs `graphs[k]` on the images that decided `k` (`null`:
the inputs pass through unchanged, a skipped block without a shortcut), scattering the outputs back, as `dispatch`
does in PyTorch. `routes` names each route with the decisions that make it (one for every `decide` step) and its
subnet: what a latency table measures.
`dslim.deploy.runtime` runs this program on onnxruntime.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from dslim.subnet import Subnet


def dispatch(
    keys: torch.Tensor, inputs: Sequence[torch.Tensor], run: Callable[[int, Sequence[torch.Tensor]], torch.Tensor]
) -> torch.Tensor:
    """`run(key, rows of inputs with that key)` once per distinct value of `keys` (shape `[N]`), results scattered
    back to their rows. A single distinct key (always so at batch 1) runs the inputs as they are, with no gather
    or scatter. Differentiable in the outputs of `run`."""
    used = keys.unique().tolist()
    if len(used) == 1:
        return run(used[0], inputs)
    out: torch.Tensor | None = None
    for key in used:
        idx = (keys == key).nonzero().flatten()
        y = run(key, [t.index_select(0, idx) for t in inputs])
        if out is None:
            out = y.new_empty((keys.shape[0], *y.shape[1:]))
        out[idx] = y
    assert out is not None
    return out


def run_blocks(blocks: Sequence[nn.Module], x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Residual blocks with a keep bit per image per block (`keep`: `[N, blocks]`): each block's body runs only on
    the images that keep it, the others take its shortcut alone (`block.run(x, keep)`). A block every image keeps
    or every image skips (always so at batch 1) runs the batch as it is."""
    n, kept = keep.shape[0], keep.sum(0).tolist()  # one synchronization for all blocks
    for b, block in enumerate(blocks):
        if kept[b] in (0, n):
            x = block.run(x, kept[b] > 0)
        else:
            x = dispatch(keep[:, b].long(), (x,), lambda k, xs, block=block: block.run(xs[0], bool(k)))
    return x


@dataclass(frozen=True)
class GraphSpec:
    """One static graph of a dynamic model: `method` (with constant `args` first) of the network built at `subnet`'s
    widths, router included, taking the program's tensors `inputs` and returning (a tuple of) `outputs`."""

    subnet: Subnet
    method: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    args: tuple = field(default=())


@dataclass(frozen=True)
class ExportPlan:
    """A dynamic model as static graphs and the JSON routing program that runs them (see the module docstring)."""

    graphs: dict[str, GraphSpec]
    program: dict


class Dynamic(Protocol):
    """What a per-input routing supernet provides (DS-Net's gate, BlockDrop's policy)."""

    def route_subnets(self) -> list[Subnet]:
        """The subnets routed inference runs at: their BatchNorm statistics must travel with a dynamic export."""
        ...

    def forward_routed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Deterministic routed inference, grouped through `dispatch`: `(logits, decision of each image)`."""
        ...

    def routed_macs(self, decisions: torch.Tensor, input_size: int) -> torch.Tensor:
        """Exact MACs of each image at its decision, the router's own cost included."""
        ...

    def route_report(self, decisions: torch.Tensor, input_size: int) -> dict:
        """The `dynamic` row of eval.json (besides top-1/top-5) for the decisions of all evaluation images:
        at least `macs_mean` and a histogram of the decisions. Histograms under `histograms`
        (`{name: {"label", "counts": {bin: count}}}`) are also drawn, each into `<name>.png` beside eval.json."""
        ...

    def route_summary(self, row: dict) -> list[str]:
        """Lines to print about the whole row (top-1 included), stored in it as `summary` (`Supernet` gives
        none by default)."""
        ...

    def export_plan(self) -> ExportPlan:
        """Static graphs and the routing program that, run on them, computes `forward_routed` (ONNX export, latency
        of each route)."""
        ...


class RoutedNet(nn.Module):
    """A deployed dynamic model: a supernet cut to its routing space, routing each input by itself.

    `forward` returns each image's logits at the decision its router makes; `route(x)` returns the decisions.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_routed(x)[0]

    def route(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_routed(x)[1]
