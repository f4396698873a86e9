"""Physical export: any subnet becomes a module of standard torch layers holding only the sliced weights.

The exported network is the supernet's own architecture built at exactly the subnet's widths, each slimmable
layer swapped for the plain torch layer it slices to (with that subnet's BatchNorm statistics) and each skipped
block for its shortcut. The file records architecture and channels, so `load_subnet` needs nothing else.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from dslim.checkpoint import load_tensors, save_tensors
from dslim.errors import UserError
from dslim.models.base import Supernet
from dslim.models.registry import supernet_class
from dslim.nn import SlimBatchNorm2d, SlimConv2d, SlimLinear
from dslim.subnet import Subnet

FORMAT = "dslim.subnet/1"
DYNAMIC_FORMAT = "dslim.dynamic/1"


def _plain(dst: nn.Module, src: nn.Module | None, key: str | None) -> nn.Module:
    """The standard layer `dst` (a slimmable layer at its exact width) stands for, filled from `src` if given."""
    if isinstance(dst, SlimConv2d):
        out = nn.Conv2d(
            dst.in_channels,
            dst.out_channels,
            dst.kernel_size,
            dst.stride,
            dst.padding,
            groups=dst.groups,
            bias=dst.bias is not None,
        )
        if src is not None:
            weight, bias = src.sliced(dst.in_channels, dst.out_channels)
            _copy(out, weight=weight, bias=bias)
    elif isinstance(dst, SlimLinear):
        out = nn.Linear(dst.in_features, dst.out_features)
        if src is not None:
            weight, bias = src.sliced(dst.in_features, dst.out_features)
            _copy(out, weight=weight, bias=bias)
    elif isinstance(dst, SlimBatchNorm2d):
        out = nn.BatchNorm2d(dst.num_features, eps=dst.eps)
        if src is not None:
            stats = src.stats_for(key)
            if stats is None:
                raise UserError("this subnet has no BatchNorm statistics: run bn_recalibration for it before export")
            weight, bias = src.affine_params(key, dst.num_features)
            _copy(
                out,
                weight=weight,
                bias=bias,
                running_mean=stats.running_mean,
                running_var=stats.running_var,
                num_batches_tracked=stats.num_batches_tracked,
            )
    else:
        return dst
    return out


def _copy(module: nn.Module, **tensors: torch.Tensor | None) -> None:
    with torch.no_grad():
        for name, value in tensors.items():
            if value is not None:
                getattr(module, name).copy_(value)


def _build(arch: str, arch_kwargs: dict, subnet: Subnet, source: Supernet | None) -> nn.Module:
    net = supernet_class(arch)(**arch_kwargs, channels=dict(subnet.items()))
    for block, keep in zip(net.blocks, subnet.blocks or [True] * len(net.blocks)):
        block.keep = keep
        if not keep:
            del block.body  # a dropped block keeps only its shortcut
    src_modules = dict(source.named_modules()) if source is not None else {}
    for name, m in list(net.named_modules()):
        if not isinstance(m, (SlimConv2d, SlimLinear, SlimBatchNorm2d)):
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = net.get_submodule(parent_name)
        src = src_modules.get(name) if source is not None else None
        parent._modules[attr] = _plain(m, src, subnet.key)
    net.dslim_meta = {"format": FORMAT, "arch": arch, "arch_kwargs": arch_kwargs, "subnet": subnet.to_json()}
    return net.eval()


def extract(supernet: Supernet, subnet: Subnet) -> nn.Module:
    """A standalone module equal to `supernet` at `subnet`, holding only the sliced weights (eval mode)."""
    supernet.check(subnet)
    return _build(supernet.arch, supernet.static_kwargs(), subnet, supernet)


class RoutedNet(nn.Module):
    """A per-input routing network: a supernet cut to its routing space (widest route), plus its gate.

    `forward` returns the logits of each image at the route the gate picks; `route(x)` says which route.
    """

    def __init__(self, net: Supernet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_dynamic(x)[0]

    def route(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_dynamic(x)[1]


def _widest(routes: list[Subnet]) -> Subnet:
    return Subnet.of({g: max(r[g] for r in routes) for g in routes[0]})


def extract_dynamic(supernet: Supernet) -> RoutedNet:
    """The routing model to deploy: slimmable layers sliced to the widest route, each route's BN statistics."""
    routes = supernet.routes()
    net = supernet_class(supernet.arch)(**supernet.arch_kwargs, channels=dict(_widest(routes).items()))
    src_modules = dict(supernet.named_modules())
    for name, m in net.named_modules():
        src = src_modules[name]
        if isinstance(m, SlimConv2d):
            _copy(m, **dict(zip(("weight", "bias"), src.sliced(m.in_channels, m.out_channels))))
        elif isinstance(m, SlimLinear):
            _copy(m, **dict(zip(("weight", "bias"), src.sliced(m.in_features, m.out_features))))
        elif isinstance(m, SlimBatchNorm2d):
            _copy(m, weight=src.weight[: m.num_features], bias=src.bias[: m.num_features])
            for r in routes:
                stats = src.stats_for(r.key)
                if stats is None:
                    raise UserError("a route has no BatchNorm statistics: run bn_recalibration before export")
                m.add_subnet(r.key, stats.running_mean.numel())
                m.stats[r.key].load_state_dict(stats.state_dict())
    meta = {
        "format": DYNAMIC_FORMAT,
        "arch": supernet.arch,
        "arch_kwargs": supernet.arch_kwargs,
        "subnet": _widest(routes).to_json(),
        "routes": [r.to_json() for r in routes],
    }
    routed = RoutedNet(net).eval()
    routed.dslim_meta = meta
    return routed


def save_subnet(model: nn.Module, subnet: Subnet | None, path: str | os.PathLike, input_size: int = 224) -> None:
    """Write `model` (a supernet exported at `subnet`, or a module `extract`/`extract_dynamic` made) to `path`."""
    if getattr(model, "dslim_meta", None) is None:
        if not isinstance(model, Supernet) or subnet is None:
            raise TypeError("save_subnet needs a supernet and a subnet, or a module made by extract()")
        model = extract(model, subnet)
    state = model.net.state_dict() if isinstance(model, RoutedNet) else model.state_dict()
    save_tensors(state, path, {**model.dslim_meta, "input_size": input_size})


def load_subnet(path: str | os.PathLike) -> nn.Module:
    """Rebuild an exported subnet (a static module, or a `RoutedNet`) from its file alone (eval mode)."""
    tensors, meta = load_tensors(path)
    subnet = Subnet.from_json(meta.get("subnet") or {"channels": {}})
    if meta.get("format") == FORMAT:
        net = _build(meta["arch"], meta["arch_kwargs"], subnet, None)
    elif meta.get("format") == DYNAMIC_FORMAT:
        net = supernet_class(meta["arch"])(**meta["arch_kwargs"], channels=dict(subnet.items()))
    else:
        raise UserError(f"{path} is not an exported subnet (format {meta.get('format')!r}, expected {FORMAT!r})")
    net.load_state_dict(tensors, strict=True)
    model = RoutedNet(net) if meta["format"] == DYNAMIC_FORMAT else net
    model.dslim_meta = {k: v for k, v in meta.items() if k != "input_size"}
    model.input_size = meta["input_size"]
    return model.eval()
