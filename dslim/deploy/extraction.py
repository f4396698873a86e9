"""Physical export: any subnet becomes a module of standard torch layers holding only the sliced weights.

The exported network is the supernet's own architecture built at exactly the subnet's widths, each slimmable
layer filled from the supernet (`SlimModule.copy_from`) and swapped for the plain torch layer it slices to
(`SlimModule.to_plain`, with that subnet's BatchNorm statistics), each skipped block reduced to its shortcut.
A dynamic model (`dslim.models.routing.Dynamic`) exports as the supernet cut to its widest route, its router, and
the statistics of every route; `load_subnet` rebuilds it as a `RoutedNet`. The file records architecture and
channels, so `load_subnet` needs nothing else; given a model folder or a whole supernet (a folder of every width,
a stage artifact) and a slice's name, it extracts that slice. For runtimes that cannot branch (ONNX),
`extract_graph` makes each graph of the model's `export_plan` a module of its own, holding only the weights of its
subnet.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dslim.deploy.runtime import Arrays, ChainMemo, execute, fuse_chains
from dslim.errors import UserError
from dslim.evaluation.calibration import has_statistics
from dslim.io import preprocessing
from dslim.io.artifacts import (
    SUPERNET_FORMAT,
    arch_class,
    build_checked,
    load_tensors,
    save_tensors,
    supernet_from,
)
from dslim.io.readers import expect
from dslim.models.base import Supernet
from dslim.models.registry import supernet_class
from dslim.models.routing import ExportPlan, GraphSpec
from dslim.nn import SlimModule
from dslim.subnet import Subnet

FORMAT = "dslim.subnet/1"
DYNAMIC_FORMAT = "dslim.dynamic/2"
SUBNET_META = {"format": str, "arch": str, "arch_kwargs": dict, "subnet": dict, "input_size": int, "routes?": [dict]}
"""The metadata of an exported subnet or dynamic model."""
INPUT_SIZES = (8, 4096)
"""Image sizes a model is built for (`--model.input-size`)."""


def check_input_size(size: object, where: str) -> None:
    low, high = INPUT_SIZES
    if isinstance(size, bool) or not isinstance(size, int) or not low <= size <= high:
        raise UserError(f"{where}: input_size {size!r} is not an image size in [{low}, {high}]")


def _build(arch: str, arch_kwargs: dict, subnet: Subnet, source: Supernet | None) -> nn.Module:
    """`arch` at exactly `subnet`'s widths, in plain torch layers (filled from `source` when given)."""
    net = supernet_class(arch)(**arch_kwargs, channels=dict(subnet.items()))
    for block, keep in zip(net.blocks, subnet.blocks or [True] * len(net.blocks)):
        block.keep = keep
        if not keep:
            del block.body  # a dropped block keeps only its shortcut
    src_modules = dict(source.named_modules()) if source is not None else {}
    for name, m in list(net.named_modules()):
        if not isinstance(m, SlimModule):
            continue
        if source is not None:
            m.copy_from(src_modules[name], [subnet.key])
        parent_name, _, attr = name.rpartition(".")
        net.get_submodule(parent_name)._modules[attr] = m.to_plain(subnet.key if source is not None else None)
    net.dslim_meta = {"format": FORMAT, "arch": arch, "arch_kwargs": arch_kwargs, "subnet": subnet.to_json()}
    return net.eval()


def extract(supernet: Supernet, subnet: Subnet, weights: bool = True) -> nn.Module:
    """A standalone module equal to `supernet` at `subnet`, holding only the sliced weights (eval mode).

    `weights=False`: the same module with fresh weights and default statistics (for timing: nothing to copy, no
    statistics needed)."""
    supernet.check(subnet)
    return _build(supernet.arch, supernet.static_kwargs(), subnet, supernet if weights else None)


class GraphModule(nn.Module):
    """One graph of a dynamic model: a method of the network built at one subnet's widths, as a module."""

    def __init__(self, net: nn.Module, spec: GraphSpec) -> None:
        super().__init__()
        self.net, self.spec = net, spec

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        return getattr(self.net, self.spec.method)(*self.spec.args, *inputs)


def extract_graph(supernet: Supernet, spec: GraphSpec, weights: bool = True) -> GraphModule:
    """A graph of `supernet.export_plan()`: physically sliced to `spec.subnet`, router kept, eval mode
    (`weights=False`: fresh weights, as `extract`)."""
    return extract_graphs(supernet, {"graph": spec}, weights)["graph"]


def _nets(
    arch: str, arch_kwargs: dict, specs: Mapping[str, GraphSpec], source: Supernet | None
) -> dict[Subnet, nn.Module]:
    """The network of each distinct subnet of `specs`, built once (filled from `source` when given): a plan of one
    graph per block (BlockDrop) would otherwise hold one whole network per block."""
    return {s: _build(arch, arch_kwargs, s, source) for s in dict.fromkeys(spec.subnet for spec in specs.values())}


def extract_graphs(supernet: Supernet, specs: Mapping[str, GraphSpec], weights: bool = True) -> dict[str, GraphModule]:
    """Every graph of an export plan (`extract_graph`), the networks of its subnets shared (`_nets`)."""
    for spec in specs.values():
        supernet.check(spec.subnet)
    nets = _nets(supernet.arch, supernet.arch_kwargs, specs, supernet if weights else None)
    return {name: GraphModule(nets[spec.subnet], spec).eval() for name, spec in specs.items()}


def widest(subnets: list[Subnet]) -> Subnet:
    """The smallest subnet that contains every one of `subnets`."""
    return Subnet.of({g: max(s[g] for s in subnets) for g in subnets[0]})


def _take(x: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
    return x.index_select(0, torch.from_numpy(idx).to(x.device))


def _put(out: torch.Tensor, idx: np.ndarray, y: torch.Tensor) -> None:
    out.index_copy_(0, torch.from_numpy(idx).to(out.device), y)


TORCH = Arrays(lambda t: t.detach().cpu().numpy(), _take, lambda y, n: y.new_empty((n, *y.shape[1:])), _put)
"""PyTorch tensors for `dslim.deploy.runtime.execute`: the routing program run on PyTorch graphs."""


class Pruned(nn.Module):
    """Where a layer was that none of its network's graphs runs (its part lives in another network of the model)."""

    def forward(self, *args: object) -> None:
        raise RuntimeError("a layer pruned from a deployed route ran: the routing program and its graphs disagree")


class RoutedNet(nn.Module):
    """A deployed dynamic model: the static graphs of its export plan, run by the plan's routing program.

    Each distinct subnet of the plan (DS-Net: each route; BlockDrop: the whole network) is one plain network holding
    that subnet's weights already sliced and contiguous, and only the layers its graphs run: a part shared by the
    routes (DS-Net's prefix and gate) lives in one network and runs once per batch. The program groups the batch
    by decision and runs each route's graph once per group (`dslim.deploy.runtime.execute`, which the onnxruntime
    runner also uses), so routing adds only the router and the gather and scatter. `forward` returns each image's
    logits, `route(x)` its decisions (int64), `routed(x)` both.
    """

    def __init__(self, nets: Mapping[Subnet, nn.Module], plan: ExportPlan, input_size: int) -> None:
        super().__init__()
        self.plan, self.keys = plan, {s: s.key for s in nets}
        self.chained, self.memo = fuse_chains(plan.program), ChainMemo()
        self.nets = nn.ModuleDict({s.key: net for s, net in nets.items()})
        for key, used in _used_layers(self.nets, plan, input_size).items():
            for name, m in list(self.nets[key].named_modules()):
                if name and name not in used and next(m.children(), None) is None and _has_state(m):
                    parent, _, attr = name.rpartition(".")
                    self.nets[key].get_submodule(parent)._modules[attr] = Pruned()

    def run_graph(self, name: str | tuple[str, ...], inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """One graph, or a chain of graphs one after the other (a BlockDrop route: `fuse_chains`)."""
        for one in (name,) if isinstance(name, str) else name:
            spec = self.plan.graphs[one]
            out = getattr(self.nets[self.keys[spec.subnet]], spec.method)(*spec.args, *inputs)
            inputs = out if isinstance(out, tuple) else (out,)
        return tuple(inputs)

    @torch.no_grad()
    def routed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # One image runs its route's chain of graphs (BlockDrop: its kept blocks) in one call, with no routing step
        # per block; a batch goes block by block, so that each block runs once on all the images that keep it.
        program = self.chained if len(x) == 1 else self.plan.program
        env = execute(program, self.run_graph, x, arrays=TORCH, memo=self.memo)
        out = self.plan.program["outputs"]
        return env[out["logits"]], torch.from_numpy(env[out["decisions"]]).to(x.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.routed(x)[0]

    def route(self, x: torch.Tensor) -> torch.Tensor:
        return self.routed(x)[1]


def _has_state(m: nn.Module) -> bool:
    return next(m.parameters(recurse=False), None) is not None or next(m.buffers(recurse=False), None) is not None


def _used_layers(nets: nn.ModuleDict, plan: ExportPlan, size: int) -> dict[str, set[str]]:
    """Names of the modules each network runs over all the plan's graphs: one pass of every graph, on a copy of
    the networks on PyTorch's `meta` device (shapes only, nothing computed), every decision forced to the first
    route's."""
    with torch.device("meta"):
        skeletons = nn.ModuleDict({k: copy.deepcopy(net).to("meta") for k, net in nets.items()})
    used: dict[str, set[str]] = {k: set() for k in nets}
    hooks = [m.register_forward_pre_hook(lambda m, a, k=k, n=n: used[k].add(n))
             for k, net in skeletons.items() for n, m in net.named_modules()]  # fmt: skip
    keys = {spec.subnet: spec.subnet.key for spec in plan.graphs.values()}

    def run(name: str, inputs: Sequence[torch.Tensor]) -> tuple:
        spec = plan.graphs[name]
        out = getattr(skeletons[keys[spec.subnet]], spec.method)(*spec.args, *inputs)
        return out if isinstance(out, tuple) else (out,)

    first = next(iter(plan.program["routes"].values()))["decisions"]
    try:
        with torch.no_grad():
            execute(plan.program, run, torch.empty(2, 3, size, size, device="meta"), first, every_graph=True,
                    arrays=TORCH)  # fmt: skip
    finally:
        for h in hooks:
            h.remove()
    return used


def extract_dynamic(supernet: Supernet, input_size: int = 64) -> RoutedNet:
    """The routing model to deploy: every graph of the export plan, each route's weights sliced (`RoutedNet`).

    `input_size`: an image size the graphs accept (only shapes are traced, to find the layers each network runs)."""
    if not supernet.is_dynamic:
        raise UserError(f"{supernet.arch} does not route per input: export a subnet instead")
    plan = supernet.export_plan()  # type: ignore[attr-defined]
    for spec in plan.graphs.values():
        supernet.check(spec.subnet)
    routes = supernet.route_subnets()  # type: ignore[attr-defined]
    routed = RoutedNet(_nets(supernet.arch, supernet.arch_kwargs, plan.graphs, supernet), plan, input_size).eval()
    routed.dslim_meta = {
        "format": DYNAMIC_FORMAT,
        "arch": supernet.arch,
        "arch_kwargs": supernet.arch_kwargs,
        "subnet": widest(routes).to_json(),
        "routes": [r.to_json() for r in routes],
    }
    return routed


def save_subnet(
    model: nn.Module,
    subnet: Subnet | None,
    path: str | os.PathLike,
    input_size: int = 224,
    convention: dict | None = None,
    **extra: object,
) -> None:
    """Write `model` (a supernet exported at `subnet`, or a module `extract`/`extract_dynamic` made) to `path`, with
    the input `convention` its weights were trained with (`dslim.io.preprocessing`), if known; `extra` (JSON values:
    the name, the recipe and resolved config it was trained with) joins its metadata."""
    if getattr(model, "dslim_meta", None) is None:
        if not isinstance(model, Supernet) or subnet is None:
            raise TypeError("save_subnet needs a supernet and a subnet, or a module made by extract()")
        model = extract(model, subnet)
    check_input_size(input_size, f"save_subnet({os.fspath(path)!r})")
    meta = {**extra, **model.dslim_meta, "input_size": input_size}
    if convention is not None:
        meta["preprocessing"] = convention
    save_tensors(model.state_dict(), path, meta)


def _input_size(meta: dict, path: str | os.PathLike) -> int:
    size = meta.get("input_size")
    check_input_size(size, f"{path}: its dslim metadata")
    return size  # type: ignore[return-value]


def load_subnet(path: str | os.PathLike, subnet: str | None = None) -> nn.Module:
    """Rebuild an exported model (a static module, or a `RoutedNet`) from its file or model folder alone (eval mode).

    `path` is a file `dslim.export` wrote, or a model folder (`--format folder`, its `model.safetensors`). A folder
    (or stage artifact) holding a whole supernet gives the subnet named `subnet` (one of its slices; `dynamic`: the
    routing model), physically sliced as `extract` makes it. `model.preprocessing` is how its inputs must be
    prepared (`dslim.io.preprocessing`: the normalization, size and crop its weights were trained with), None for a
    file that does not record it.

    The file is checked first (metadata, then the tensors against the architecture it names, on the `meta` device),
    so a damaged or foreign file is refused in one line before anything is built from it; nothing but safetensors
    and JSON metadata is read.
    """
    file = Path(path) / "model.safetensors" if Path(path).is_dir() else Path(path)
    if Path(path).is_dir() and not file.is_file():
        raise UserError(f"{path} is not a dslim model folder: it has no model.safetensors")
    tensors, meta = load_tensors(file)
    kind = meta.get("format")
    if kind == SUPERNET_FORMAT:
        return _slice(supernet_from(tensors, meta, file), meta, path, subnet)
    if kind not in (FORMAT, DYNAMIC_FORMAT):
        raise UserError(
            f"{file} is not an exported subnet (format {kind!r}, expected {FORMAT!r} or {DYNAMIC_FORMAT!r})"
        )
    if subnet is not None and subnet != meta.get("name"):
        raise UserError(f"{path} holds one model ({meta.get('name') or 'unnamed'}), not a supernet: load it "
                        "without subnet=")  # fmt: skip
    expect(meta, SUBNET_META, f"{file}: its dslim metadata")
    cls = arch_class(meta, file)
    arch, kwargs, size = cls.arch, meta["arch_kwargs"], meta["input_size"]
    check_input_size(size, f"{file}: its dslim metadata")
    channels = Subnet.from_json(meta["subnet"], f"{file}: metadata 'subnet'")

    def build() -> nn.Module:
        if kind == FORMAT:
            return _build(arch, kwargs, channels, None)  # type: ignore[arg-type]
        cut = cls(**kwargs, channels=dict(channels.items()))  # the supernet cut to its routes: their plan
        if meta.get("routes") != [r.to_json() for r in cut.route_subnets()]:
            raise UserError(f"{file}: its routes are not the ones this version of dslim builds for its architecture")
        plan = cut.export_plan()
        return RoutedNet(_nets(arch, kwargs, plan.graphs, None), plan, size)  # type: ignore[arg-type]

    model = build_checked(build, tensors, file, f"{arch} subnet")
    model.dslim_meta = {k: v for k, v in meta.items() if k != "input_size"}
    model.input_size = size
    model.preprocessing = preprocessing.read(meta, path)
    return model.eval()


def _slice(net: Supernet, meta: dict, path: str | os.PathLike, name: str | None) -> nn.Module:
    """The slice `name` of a stored supernet, as `load_subnet` returns it."""
    slices = [n for n, s in net.named_subnets().items() if has_statistics(net, s)]
    dynamic = net.is_dynamic and net.router_trained
    names = ", ".join(slices + (["dynamic"] if dynamic else []))
    if name is None:
        raise UserError(f"{path} holds a whole supernet: give subnet=NAME, one of {names}")
    if name == "dynamic" and dynamic:
        model = extract_dynamic(net)
    else:
        found = net.resolve(name)
        if not has_statistics(net, found):
            raise UserError(f"{path} holds no BatchNorm statistics for subnet {name}; it holds {names} (export the "
                            f"run again with --subnets ... {name} to store it)")  # fmt: skip
        model = extract(net, found)
        model.dslim_meta["name"] = name
    model.input_size = _input_size(meta, path)
    model.preprocessing = preprocessing.read(meta, path)  # a slice's inputs are the supernet's
    return model
