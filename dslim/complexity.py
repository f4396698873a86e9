"""One complexity model: exact MACs/params from the executed shapes, and its differentiable expectation.

Conventions (those of the slimmable-networks and DS-Net tables): a conv costs `C_in * C_out * k * k * H_out * W_out
/ groups`, a linear `in * out`, an average pool the number of its input elements; BatchNorm, activations and
elementwise products are free. Params are those of the sliced subnet (what an exported module holds).

`trace` records every costed layer once with its channel groups; `MacsModel` re-evaluates those terms for any
channel counts, so expected channels (DMCP) or route probabilities (DS-Net's gate) give differentiable MACs
that equal the exact count when the choices are hard.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from dslim.models.base import Supernet
from dslim.nn import SlimBatchNorm2d
from dslim.subnet import Subnet


@dataclass(frozen=True)
class Term:
    """One costed layer: `coef * c_in * c_out` (dense), `coef * c_in` (depthwise or pooling)."""

    name: str
    kind: str  # "conv", "dwconv", "linear", "pool"
    in_group: str | None
    out_group: str | None
    c_in: int
    c_out: int
    coef: int
    block: int | None

    @property
    def macs(self) -> int:
        return self.coef * self.c_in * (self.c_out if self.kind in ("conv", "linear") else 1)


@dataclass(frozen=True)
class Cost:
    macs: int
    params: int
    terms: tuple[Term, ...]


def _params(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    if isinstance(m, nn.Conv2d):
        c_in, c_out = x.shape[1], y.shape[1]
        groups = c_in if getattr(m, "depthwise", False) or m.groups == m.in_channels > 1 else m.groups
        n = c_out * (c_in // groups) * m.kernel_size[0] * m.kernel_size[1]
        return n + (c_out if m.bias is not None else 0)
    if isinstance(m, nn.Linear):
        return x.shape[-1] * y.shape[-1] + (y.shape[-1] if m.bias is not None else 0)
    if isinstance(m, (SlimBatchNorm2d, nn.BatchNorm2d)):
        return 2 * x.shape[1]
    return 0


def _term(name: str, m: nn.Module, x: torch.Tensor, y: torch.Tensor, block: int | None) -> Term | None:
    g_in, g_out = getattr(m, "in_group", None), getattr(m, "out_group", None)
    if isinstance(m, nn.Conv2d):
        depthwise = getattr(m, "depthwise", False) or m.groups == m.in_channels > 1
        k = m.kernel_size[0] * m.kernel_size[1] * y.shape[2] * y.shape[3]
        if not depthwise and m.groups != 1:
            raise NotImplementedError("grouped (non-depthwise) convs are not costed")
        return Term(name, "dwconv" if depthwise else "conv", g_in, g_out, x.shape[1], y.shape[1], k, block)
    if isinstance(m, nn.Linear):
        return Term(name, "linear", g_in, g_out, x.shape[-1], y.shape[-1], 1, block)
    if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AvgPool2d)):
        g = getattr(m, "group", None)
        return Term(name, "pool", g, g, x.shape[1], x.shape[1], x.shape[2] * x.shape[3], block)
    return None


def measure(model: nn.Module, input_size: int, subnet: Subnet | None = None) -> Cost:
    """Exact MACs and params per image of `model` (a supernet at `subnet`, or any plain module).

    Runs one no-grad forward of two random images in train mode (so subnets without BN statistics can be
    costed) without touching any statistics, then restores the model's mode and subnet.
    """
    supernet = model if isinstance(model, Supernet) else None
    block_of = {}
    if supernet is not None:
        names = {m: n for n, m in model.named_modules()}
        for i, block in enumerate(supernet.blocks):
            prefix = names[block] + "."
            for n, m in model.named_modules():
                if n.startswith(prefix) and not n.startswith(prefix + "shortcut"):
                    block_of[m] = i
    terms: list[Term] = []
    params = 0
    hooks = []

    def hook(m: nn.Module, args: tuple, y: torch.Tensor) -> None:
        nonlocal params
        x = args[0]
        params += _params(m, x, y)
        t = _term(name_of[m], m, x, y, block_of.get(m))
        if t is not None:
            terms.append(t)

    name_of = {m: n for n, m in model.named_modules()}
    for m in model.modules():
        if not list(m.children()) or isinstance(m, SlimBatchNorm2d):
            hooks.append(m.register_forward_hook(hook))
    was_training = model.training
    bns = [m for m in model.modules() if isinstance(m, SlimBatchNorm2d)]
    tracks = [bn.track for bn in bns]
    previous = supernet.subnet if supernet is not None else None
    try:
        for bn in bns:
            bn.track = False
        if supernet is not None and subnet is not None:
            supernet.set_subnet(subnet)
        model.train()
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.randn(2, 3, input_size, input_size, device=device))
    finally:
        for h in hooks:
            h.remove()
        for bn, t in zip(bns, tracks):
            bn.track = t
        model.train(was_training)
        if previous is not None:
            supernet.set_subnet(previous)
    return Cost(sum(t.macs for t in terms), params, tuple(terms))


class MacsModel:
    """MACs as a polynomial in channel counts: exact for integer channels, differentiable for expectations.

    `macs(channels, keep)` takes a channel count (int, float or tensor, any batch shape) per group and an optional
    keep probability per block. For DMCP pass expected channels; for a gate pass per-sample expectations or use
    `exact_route_macs` (products of correlated widths are only exact that way).
    """

    def __init__(self, supernet: Supernet, input_size: int) -> None:
        self.terms = measure(supernet, input_size, supernet.largest()).terms

    def macs(self, channels: Mapping[str, torch.Tensor | float], keep: torch.Tensor | None = None) -> torch.Tensor:
        total = torch.zeros(())
        for t in self.terms:
            c_in = t.c_in if t.in_group is None else channels[t.in_group]
            c_out = t.c_out if t.out_group is None else channels[t.out_group]
            cost = t.coef * c_in * (c_out if t.kind in ("conv", "linear") else 1)
            if keep is not None and t.block is not None:
                cost = cost * keep[..., t.block]
            total = total + cost
        return total

    def expected(self, probs: Mapping[str, torch.Tensor], choices: Mapping[str, tuple[int, ...]]) -> torch.Tensor:
        """MACs at the expected channels `E[c] = sum_k p_k c_k` per group (DMCP's approximation)."""
        channels = {}
        for g, c in choices.items():
            p = probs[g]
            channels[g] = (p * torch.tensor(c, dtype=p.dtype, device=p.device)).sum(-1)
        return self.macs(channels)


def route_macs(supernet: Supernet, routes: list[Subnet], input_size: int) -> torch.Tensor:
    """Exact MACs of each route; `onehot @ route_macs` is a per-sample MACs differentiable through the one-hot."""
    return torch.tensor([float(measure(supernet, input_size, r).macs) for r in routes])
