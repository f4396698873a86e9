"""What every supernet shares: channel groups, named subnets, and setting a subnet explicitly."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch
from torch import nn

from dslim.errors import UserError
from dslim.nn import SlimBatchNorm2d, SlimConv2d, SlimLinear, slim_layers
from dslim.subnet import ChannelGroup, Subnet


class Supernet(nn.Module):
    """A network whose subnets share weights.

    Subclasses build their layers from `dslim.nn`, declare their `ChannelGroup`s and name their subnets
    (`builtin_subnets`); searches and samplers add names of their own (`name_subnets`), stored with the artifact.
    `set_subnet` (or `with net.using(subnet):`) is the only way widths change, and they stay set. Built with
    `channels=` (a mapping group -> channels), the same architecture is made at exactly those widths: that is how
    a subnet is exported as a standalone module.

    A dynamic supernet (a DS-Net gate, a BlockDrop policy) also implements the routing protocol of
    `dslim.models.routing`; `router_trained` says whether its router has learnt anything yet.
    """

    arch: str = ""

    def __init__(self, groups: list[ChannelGroup], bn: str, arch_kwargs: dict) -> None:
        super().__init__()
        self.groups = {g.name: g for g in groups}
        self.bn_mode = bn
        self.arch_kwargs = arch_kwargs
        self.blocks: list[nn.Module] = []
        self.subnet: Subnet | None = None
        self.extra_names: dict[str, Subnet] = {}
        self.router_trained = False

    # -- subclasses -------------------------------------------------------------------------------------------
    def builtin_subnets(self) -> dict[str, Subnet]:
        """The architecture's own named subnets (widths, DS-Net's uniform choices...)."""
        raise NotImplementedError

    def smallest(self) -> Subnet:
        raise NotImplementedError

    def subnet_from_name(self, name: str) -> Subnet | None:
        """Subnets reachable by name beyond `named_subnets` (e.g. any width of a universally slimmable net)."""
        return None

    def static_kwargs(self) -> dict:
        """Constructor arguments of this architecture as a static (exported) network."""
        return self.arch_kwargs

    def unnamed_kwargs(self, bn: str) -> dict:
        """Constructor arguments of a fresh network of this architecture with BatchNorm `bn` and as few named
        subnets of its own as it can have: a supernet whose names come from `name_subnets` (retraining searched
        subnets jointly trains every named subnet)."""
        return {**self.arch_kwargs, "bn": bn}

    def round_channels(self, channels: float) -> int:
        """A fractional channel count rounded as this architecture rounds widths (for channel bins)."""
        return max(1, int(round(channels)))

    def soft_mask_sites(self) -> list[tuple[nn.Module, str]]:
        """Where a soft mask of each channel group scales the activations (DMCP's architecture forward): after
        every BatchNorm of a group, where normalization cannot undo it. An architecture whose original masks
        elsewhere declares its own sites (MobileNet v2)."""
        return [(m, m.group) for m in self.modules() if isinstance(m, SlimBatchNorm2d) and m.group is not None]

    @property
    def is_dynamic(self) -> bool:
        """Whether this network routes each input (implements `dslim.models.routing.Dynamic`)."""
        return False

    def route_summary(self, row: dict) -> list[str]:
        """Lines a dynamic model prints about its evaluation (`row`: its `route_report` with top-1/top-5); none by
        default."""
        return []

    # -- names ------------------------------------------------------------------------------------------------
    def named_subnets(self) -> dict[str, Subnet]:
        return {**self.builtin_subnets(), **self.extra_names}

    def name_subnets(self, named: Mapping[str, Subnet]) -> None:
        """Give subnets names of their own (found by a search, drawn by a sampler); they travel with the artifact.

        Private and switchable BatchNorm get statistics (and affines) for them, as for the built-in names.
        """
        for name, subnet in named.items():
            self.check(subnet)
            self.extra_names[name] = subnet
        self._allocate(named.values())

    def allowed_names(self) -> str:
        return ", ".join(self.named_subnets())

    def resolve(self, name: str) -> Subnet:
        """The subnet called `name`; a `UserError` listing the allowed names otherwise."""
        named = self.named_subnets()
        if name in named:
            return named[name]
        found = self.subnet_from_name(name)
        if found is None:
            raise UserError(f"unknown subnet {name!r} for {self.arch}; allowed: {self.allowed_names()}")
        return found

    def name_of(self, subnet: Subnet, default: str) -> str:
        """`subnet`'s own name if it has one (the last listed, the most specific: `uniform-0` over `smallest`),
        else `default`."""
        return next((n for n, s in reversed(self.named_subnets().items()) if s == subnet), default)

    # -- channels ---------------------------------------------------------------------------------------------
    def largest(self) -> Subnet:
        """Every group at its widest; the same object each time, so setting it again is `set_subnet`'s fast path."""
        if "_largest" not in self.__dict__:
            self.__dict__["_largest"] = Subnet.of({name: g.max for name, g in self.groups.items()})
        return self.__dict__["_largest"]

    def group_choices(self, bins: int = 0, min_bin: int = 1) -> dict[str, tuple[int, ...]]:
        """The channel counts each group may take: its own choices, or `min_bin/bins .. bins/bins` of its widest
        width rounded by the architecture's rule (AutoSlim's bins), or, with `bins=0`, every count in its range."""
        out = {}
        for name, g in self.groups.items():
            if g.choices is not None:
                out[name] = g.choices
            elif bins:
                if not 1 <= min_bin <= bins:
                    raise UserError(f"--model.min-bin {min_bin} must be in [1, --model.channel-bins {bins}]")
                counts = {self.round_channels(g.max * i / bins) for i in range(min_bin, bins + 1)}
                counts = {max(g.step, round(c / g.step) * g.step) for c in counts}
                out[name] = tuple(sorted(c for c in counts if g.min <= c <= g.max))
            else:
                out[name] = tuple(range(g.min, g.max + 1, g.step))
        return out

    # -- building ---------------------------------------------------------------------------------------------
    def norm(self, channels: int, group: str | None) -> SlimBatchNorm2d:
        return SlimBatchNorm2d(channels, group, self.bn_mode)

    def finish(self, allocate: bool = True) -> None:
        """Call at the end of a subclass's `__init__`: allocate per-subnet BN state, start at the largest.

        `allocate=False` for a network built at one subnet's exact widths (export), which has no other subnets.
        """
        self.init_weights()
        self._layers = tuple(slim_layers(self))  # a plain tuple (not registered): set_subnet's fast path
        if allocate:
            self._allocate(self.builtin_subnets().values())
        self.set_subnet(self.largest())

    def _allocate(self, subnets: Iterator[Subnet] | list[Subnet]) -> None:
        if self.bn_mode == "calibrated":  # statistics come from calibration, for any subnet
            return
        device = next(self.parameters()).device
        for subnet in subnets:
            for m in self._layers:
                if isinstance(m, SlimBatchNorm2d):
                    m.add_subnet(subnet.key, m.channels(subnet))
                    m.to(device)

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

    # -- setting a subnet -------------------------------------------------------------------------------------
    def check(self, subnet: Subnet) -> None:
        if list(subnet) != list(self.groups):
            raise UserError(f"subnet groups {list(subnet)} do not match {self.arch}'s groups {list(self.groups)}")
        for name, channels in subnet.items():
            self.groups[name].check(channels)
        if subnet.blocks is not None and len(subnet.blocks) != len(self.blocks):
            raise UserError(f"block mask has {len(subnet.blocks)} entries; {self.arch} has {len(self.blocks)} blocks")

    def set_subnet(self, subnet: Subnet) -> None:
        """Make every layer run at `subnet` until another subnet is set."""
        if subnet is self.subnet:
            return
        self.check(subnet)
        for m in self._layers:
            m.follow(subnet)
        for block, keep in zip(self.blocks, subnet.blocks or [True] * len(self.blocks)):
            block.keep = keep
        self.subnet = subnet

    @contextlib.contextmanager
    def using(self, subnet: Subnet | None = None, *, train: bool | None = None) -> Iterator[Supernet]:
        """Run at `subnet` (and in train or eval mode, if given) inside the block, then restore both."""
        previous, was_training = self.subnet, self.training
        if subnet is not None:
            self.set_subnet(subnet)
        if train is not None:
            self.train(train)
        try:
            yield self
        finally:
            if train is not None:
                self.train(was_training)
            if previous is not None:
                self.set_subnet(previous)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


def resolve_channels(defaults: Mapping[str, int], channels: Mapping[str, int] | None) -> dict[str, int]:
    """The widths to build: the supernet's maxima, or exactly `channels` for an exported subnet."""
    if channels is None:
        return dict(defaults)
    return {g: int(channels[g]) for g in defaults}
