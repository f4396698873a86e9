"""What every supernet shares: channel groups, named subnets, and setting a subnet explicitly."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

from torch import nn

from dslim.errors import UserError
from dslim.nn import SlimBatchNorm2d, SlimConv2d, SlimLinear
from dslim.subnet import ChannelGroup, Subnet


class Supernet(nn.Module):
    """A network whose subnets share weights.

    Subclasses build their layers from `dslim.nn`, declare their `ChannelGroup`s and name their subnets.
    `set_subnet` (or `with model.using(subnet):`) is the only way widths change, and they stay set.
    Built with `channels=` (a mapping group -> channels), the same architecture is made at exactly those widths:
    that is how a subnet is exported as a standalone module.
    """

    arch: str = ""

    def __init__(self, groups: list[ChannelGroup], bn: str, arch_kwargs: dict) -> None:
        super().__init__()
        self.groups = {g.name: g for g in groups}
        self.bn_mode = bn
        self.arch_kwargs = arch_kwargs
        self.blocks: list[nn.Module] = []
        self.subnet: Subnet | None = None

    # -- subclasses -------------------------------------------------------------------------------------------
    def named_subnets(self) -> dict[str, Subnet]:
        raise NotImplementedError

    def smallest(self) -> Subnet:
        raise NotImplementedError

    def subnet_from_name(self, name: str) -> Subnet | None:
        """Subnets reachable by name beyond `named_subnets` (e.g. any width of a universally slimmable net)."""
        return None

    def static_kwargs(self) -> dict:
        """Constructor arguments of this architecture as a static (exported) network."""
        return self.arch_kwargs

    def allowed_names(self) -> str:
        return ", ".join(self.named_subnets())

    # -- shared -----------------------------------------------------------------------------------------------
    def norm(self, channels: int, group: str | None) -> SlimBatchNorm2d:
        return SlimBatchNorm2d(channels, group, self.bn_mode)

    def largest(self) -> Subnet:
        return Subnet.of({name: g.max for name, g in self.groups.items()})

    def resolve(self, name: str) -> Subnet:
        """The subnet called `name`; a `UserError` listing the allowed names otherwise."""
        named = self.named_subnets()
        if name in named:
            return named[name]
        found = self.subnet_from_name(name)
        if found is None:
            raise UserError(f"unknown subnet {name!r} for {self.arch}; allowed: {self.allowed_names()}")
        return found

    def finish(self, allocate: bool = True) -> None:
        """Call at the end of a subclass's `__init__`: allocate per-subnet BN state, start at the largest.

        `allocate=False` for a network built at one subnet's exact widths (export), which has no other subnets.
        """
        self.init_weights()
        self._layers = tuple(slim_layers(self))  # a plain tuple (not registered): set_subnet's fast path
        if allocate and self.bn_mode != "calibrated":
            for subnet in self.named_subnets().values():
                for m in self.modules():
                    if isinstance(m, SlimBatchNorm2d):
                        m.add_subnet(subnet.key, m.num_features if m.group is None else subnet[m.group])
        self.set_subnet(self.largest())

    def init_weights(self) -> None:
        """The originals' initialization: He-normal (fan-out) convs, N(0, 0.01) classifier, zero biases."""
        for m in self.modules():
            if isinstance(m, SlimConv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, SlimLinear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def check(self, subnet: Subnet) -> None:
        if list(subnet) != list(self.groups):
            raise UserError(f"subnet groups {list(subnet)} do not match {self.arch}'s groups {list(self.groups)}")
        for name, channels in subnet.items():
            self.groups[name].check(channels)
        if subnet.blocks is not None and len(subnet.blocks) != len(self.blocks):
            raise UserError(f"block mask has {len(subnet.blocks)} entries; {self.arch} has {len(self.blocks)} blocks")

    def set_subnet(self, subnet: Subnet) -> None:
        """Make every layer run at `subnet` until another subnet is set."""
        self.check(subnet)
        key = subnet.key
        for m in self._layers:
            # plain attribute writes: nn.Module.__setattr__'s bookkeeping is most of the cost at batch 1
            if isinstance(m, SlimBatchNorm2d):
                object.__setattr__(m, "key", key)
            else:
                object.__setattr__(m, "active_out", None if m.out_group is None else subnet[m.out_group])
        for block, keep in zip(self.blocks, subnet.blocks or [True] * len(self.blocks)):
            block.keep = keep
        self.subnet = subnet

    @contextlib.contextmanager
    def using(self, subnet: Subnet) -> Iterator[Supernet]:
        """Run at `subnet` inside the block, then return to the previous subnet."""
        previous = self.subnet
        self.set_subnet(subnet)
        try:
            yield self
        finally:
            if previous is not None:
                self.set_subnet(previous)


def slim_layers(module: nn.Module) -> Iterator[nn.Module]:
    """The slimmable layers under `module`, without walking into BatchNorms' per-subnet statistics."""
    for child in module.children():
        if isinstance(child, (SlimConv2d, SlimLinear, SlimBatchNorm2d)):
            yield child
        else:
            yield from slim_layers(child)


def resolve_channels(defaults: Mapping[str, int], channels: Mapping[str, int] | None) -> dict[str, int]:
    """The widths to build: the supernet's maxima, or exactly `channels` for an exported subnet."""
    if channels is None:
        return dict(defaults)
    return {g: int(channels[g]) for g in defaults}
