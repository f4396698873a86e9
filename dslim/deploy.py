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
    net.exported = (arch, arch_kwargs, subnet)
    return net.eval()


def extract(supernet: Supernet, subnet: Subnet) -> nn.Module:
    """A standalone module equal to `supernet` at `subnet`, holding only the sliced weights (eval mode)."""
    supernet.check(subnet)
    return _build(supernet.arch, supernet.static_kwargs(), subnet, supernet)


def save_subnet(model: nn.Module, subnet: Subnet | None, path: str | os.PathLike, input_size: int = 224) -> None:
    """Write `model` (a supernet, exported at `subnet`, or a module `extract` made) as safetensors + metadata."""
    if getattr(model, "exported", None) is None:
        if not isinstance(model, Supernet) or subnet is None:
            raise TypeError("save_subnet needs a supernet and a subnet, or a module made by extract()")
        model = extract(model, subnet)
    arch, arch_kwargs, sub = model.exported
    meta = {
        "format": FORMAT,
        "arch": arch,
        "arch_kwargs": arch_kwargs,
        "subnet": sub.to_json(),
        "num_classes": arch_kwargs.get("num_classes"),
        "input_size": input_size,
    }
    save_tensors(model.state_dict(), path, meta)


def load_subnet(path: str | os.PathLike) -> nn.Module:
    """Rebuild an exported subnet from its file alone (eval mode)."""
    tensors, meta = load_tensors(path)
    if meta.get("format") != FORMAT:
        raise UserError(f"{path} is not an exported subnet (format {meta.get('format')!r}, expected {FORMAT!r})")
    net = _build(meta["arch"], meta["arch_kwargs"], Subnet.from_json(meta["subnet"]), None)
    net.load_state_dict(tensors, strict=True)
    net.input_size = meta["input_size"]
    return net
