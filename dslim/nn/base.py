"""The slimmable-layer protocol: what a supernet, the complexity model and export ask of every layer kind.

A new layer kind (a zero-padding shortcut, a gate head) implements these four methods and is then handled by
`Supernet.set_subnet`, `dslim.models.complexity` and `dslim.deploy.extraction` without any of them listing layer types.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from dslim.subnet import Subnet


@dataclass(frozen=True)
class LayerCost:
    """One costed layer: `coef * c_in * c_out` MACs (`dense`) or `coef * c_in` (`per_input`: depthwise, pooling).

    `in_group` / `out_group` name the channel groups `c_in` / `c_out` follow (None: a fixed width), so the same
    term can be re-evaluated at any channel counts (expected channels, per-route widths). A layer whose channels
    come from several groups (a converted model's layer after a concatenation) gives `in_count` / `out_count`
    instead: its channels as a function of every group's count.
    """

    kind: Literal["dense", "per_input"]
    in_group: str | None
    out_group: str | None
    c_in: int
    c_out: int
    coef: int
    in_count: Callable[[Mapping], object] | None = None
    out_count: Callable[[Mapping], object] | None = None

    def at(self, channels: Mapping) -> tuple:
        """`(c_in, c_out)` at the channel counts `channels` (group -> count)."""
        c_in = (
            self.in_count(channels)
            if self.in_count
            else self.c_in
            if self.in_group is None
            else channels[self.in_group]
        )
        c_out = (
            self.out_count(channels)
            if self.out_count
            else self.c_out
            if self.out_group is None
            else channels[self.out_group]
        )
        return c_in, c_out

    def macs(self, c_in: float | torch.Tensor | None = None, c_out: float | torch.Tensor | None = None):  # type: ignore[no-untyped-def]
        c_in = self.c_in if c_in is None else c_in
        c_out = self.c_out if c_out is None else c_out
        return self.coef * c_in * (c_out if self.kind == "dense" else 1)


class SlimModule(nn.Module):
    """A layer that runs at whatever subnet its supernet sets, and stays there."""

    def follow(self, subnet: Subnet) -> None:
        """Take the widths (or statistics) of `subnet`; called by `Supernet.set_subnet` only."""

    def cost(self, x: torch.Tensor, y: torch.Tensor) -> tuple[LayerCost | None, int]:
        """MACs term and parameter count per image for one forward from `x` to `y` (the executed shapes)."""
        return None, 0

    def mask_channels(self, masks: Mapping[str, torch.Tensor] | None) -> None:
        """Multiply this layer's output by per-group soft channel masks (DMCP's architecture pass), or stop."""

    def copy_from(self, source: SlimModule, keys: Sequence[str]) -> None:
        """Fill this layer (built at a subnet's exact widths) from the same layer of a wider supernet, with the
        BatchNorm statistics of the subnets `keys`."""

    def to_plain(self, key: str | None) -> nn.Module:
        """The standard torch module this layer stands for at its built widths (with the statistics of `key`)."""
        return self


def slim_layers(module: nn.Module) -> Iterator[SlimModule]:
    """The slimmable layers under `module`, without walking into a layer's own children (per-subnet statistics)."""
    for child in module.children():
        if isinstance(child, SlimModule):
            yield child
        else:
            yield from slim_layers(child)


def copy_(module: nn.Module, **tensors: torch.Tensor | None) -> None:
    """Copy each given tensor into the parameter or buffer of that name."""
    with torch.no_grad():
        for name, value in tensors.items():
            if value is not None:
                getattr(module, name).copy_(value)
