"""One complexity model: exact MACs/params from the executed shapes, and its differentiable expectation.

Conventions (those of the slimmable-networks and DS-Net tables): a conv costs `C_in * C_out * k * k * H_out * W_out
/ groups` (grouped and depthwise alike), a transposed conv `C_in * C_out / groups * k * k * H_in * W_in`, a linear
`in * out` (per position for one applied to a channels-last map), an average pool the number of its input elements;
BatchNorm, LayerNorm, activations and elementwise products are free. A converted model's matrix products are
costed by their layers (`dslim.nn.indexed.GraphOp`). Params are those of the sliced subnet (what an exported module
holds).

`measure` records every costed layer once with its channel groups (each slimmable layer says what it costs:
`SlimModule.cost`); `MacsModel` re-evaluates those terms for any channel counts, so expected channels (DMCP) or
keep probabilities (BlockDrop) give differentiable MACs that equal the exact count when the choices are hard.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from dslim.nn import LayerCost, SlimBatchNorm2d, SlimModule
from dslim.subnet import Subnet


@dataclass(frozen=True)
class Term:
    """One costed layer of a network: its `LayerCost`, its module name, and the block it belongs to (or None)."""

    name: str
    cost: LayerCost
    block: int | None

    @property
    def macs(self) -> int:
        return self.cost.macs()


@dataclass(frozen=True)
class Cost:
    macs: int
    params: int
    terms: tuple[Term, ...]


def _plain_cost(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[LayerCost | None, int]:
    """The cost of a standard torch layer (an exported network holds these)."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        c_in, c_out = x.shape[1], y.shape[1]
        k = m.kernel_size[0] * m.kernel_size[1]
        # a transposed conv scatters every input pixel: its spatial factor is the input's
        spatial = x.shape[2] * x.shape[3] if isinstance(m, nn.ConvTranspose2d) else y.shape[2] * y.shape[3]
        params = m.weight.numel() + (c_out if m.bias is not None else 0)
        if m.groups == 1:
            return LayerCost("dense", None, None, c_in, c_out, k * spatial), params
        # grouped and depthwise: each output (transposed: input) channel sees one group of `width` channels
        width = m.weight.shape[1]
        c = c_in if isinstance(m, nn.ConvTranspose2d) else c_out
        return LayerCost("per_input", None, None, c, c, k * spatial * width), params
    if isinstance(m, nn.Linear):
        c_in, c_out = x.shape[-1], y.shape[-1]
        rows = x[0].numel() // c_in if x.dim() > 2 else 1
        return LayerCost("dense", None, None, c_in, c_out, rows), c_in * c_out + (c_out if m.bias is not None else 0)
    if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AvgPool2d)):
        c = x.shape[1]
        return LayerCost("per_input", None, None, c, c, x.shape[2] * x.shape[3]), 0
    if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
        return None, 2 * x.shape[1]
    if isinstance(m, nn.LayerNorm):
        return None, sum(p.numel() for p in m.parameters())
    return None, 0


def _block_of(model: nn.Module) -> dict[nn.Module, int]:
    """Module -> index of the skippable block it belongs to (shortcuts excluded: they run when a block is skipped)."""
    blocks = getattr(model, "blocks", [])
    out = {}
    for i, block in enumerate(blocks):
        skip = set(getattr(block, "shortcut", nn.Identity()).modules())
        for m in block.modules():
            if m not in skip:
                out[m] = i
    return out


def measure(model: nn.Module, input_size: int, subnet: Subnet | None = None) -> Cost:
    """Exact MACs and params per image of `model` (a supernet at `subnet`, or any plain module).

    Runs one no-grad forward of two random images in train mode (so subnets without BN statistics can be
    costed) without touching any statistics, then restores the model's mode and subnet.
    """
    block_of = _block_of(model)
    name_of = {m: n for n, m in model.named_modules()}
    terms: list[Term] = []
    params = 0

    def hook(m: nn.Module, args: tuple, y: torch.Tensor) -> None:
        nonlocal params
        x = args[0] if args else None
        cost, n = m.cost(x, y) if isinstance(m, SlimModule) else _plain_cost(m, x, y)
        params += n
        if cost is not None:
            terms.append(Term(name_of[m], cost, block_of.get(m)))

    hooks = [m.register_forward_hook(hook) for m in _costed(model)]
    bns = [m for m in model.modules() if isinstance(m, SlimBatchNorm2d)]
    tracks = [bn.track for bn in bns]
    using = model.using(subnet, train=True) if hasattr(model, "using") else _train_mode(model)
    try:
        for bn in bns:
            bn.track = False
        with using, torch.no_grad():
            p = next(model.parameters())
            model(torch.randn(2, 3, input_size, input_size, device=p.device, dtype=p.dtype))
    finally:
        for h in hooks:
            h.remove()
        for bn, t in zip(bns, tracks):
            bn.track = t
    return Cost(sum(t.macs for t in terms), params, tuple(terms))


def _costed(module: nn.Module) -> list[nn.Module]:
    """The layers whose cost `measure` records: slimmable layers (not their own children) and plain leaves."""
    out = []
    for child in module.children():
        if isinstance(child, SlimModule) or not list(child.children()):
            out.append(child)
        else:
            out += _costed(child)
    return out


@contextlib.contextmanager
def _train_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.train()
    try:
        yield
    finally:
        model.train(was_training)


class MacsModel:
    """MACs as a polynomial in channel counts: exact for integer channels, differentiable for expectations.

    `macs(channels, keep)` takes a channel count (int, float or tensor, any batch shape) per group and an optional
    keep probability (or bit) per block, broadcast against the channels' batch shape.
    """

    def __init__(self, supernet: nn.Module, input_size: int) -> None:
        self.terms = measure(supernet, input_size, supernet.largest()).terms  # type: ignore[operator]

    def macs(self, channels: Mapping[str, torch.Tensor | float], keep: torch.Tensor | None = None) -> torch.Tensor:
        total = torch.zeros(())
        for t in self.terms:
            cost = t.cost.macs(*t.cost.at(channels))
            if keep is not None and t.block is not None:
                cost = cost * keep[..., t.block]
            total = total + cost
        return total

    def exact(self, subnet: Subnet) -> int:
        """MACs of `subnet` as an exact integer, without a forward (a search costs thousands of candidates)."""
        total = 0
        for t in self.terms:
            c = t.cost
            if subnet.blocks is not None and t.block is not None and not subnet.blocks[t.block]:
                continue
            total += c.macs(*c.at(subnet))
        return int(total)

    def expected(self, probs: Mapping[str, torch.Tensor], choices: Mapping[str, tuple[int, ...]]) -> torch.Tensor:
        """MACs at the expected channels `E[c] = sum_k p_k c_k` per group, from choice probabilities."""
        channels = {}
        for g, c in choices.items():
            p = probs[g]
            channels[g] = (p * torch.tensor(c, dtype=p.dtype, device=p.device)).sum(-1)
        return self.macs(channels)


def route_macs(supernet: nn.Module, routes: list[Subnet], input_size: int) -> torch.Tensor:
    """Exact MACs of each route; `onehot @ route_macs` is a per-sample MACs differentiable through the one-hot."""
    return torch.tensor([float(measure(supernet, input_size, r).macs) for r in routes])


def profile_subnets(net: nn.Module, subnets: Mapping[str, Subnet], input_size: int) -> list[dict]:
    """One row per subnet: name, MACs and params of the sliced subnet at `input_size`."""
    rows = []
    for name, subnet in subnets.items():
        cost = measure(net, input_size, subnet)
        rows.append({"subnet": name, "macs": cost.macs, "params": cost.params})
    return rows
