"""Slimmable BatchNorm with running statistics filed per subnet.

Statistics depend on every upstream layer's width, so they are kept per subnet (`Subnet.key`), never per layer
width alone. The three published variants are three settings of one module:

- `private` (DS-Net): one affine at the widest width, sliced from the front; statistics tracked per subnet.
- `switchable` (S-Net): affine and statistics both private to each subnet.
- `calibrated` (US-Net, AutoSlim, DMCP): one sliced affine; training normalizes by batch statistics only and
  statistics are computed afterwards for any subnet (`bn_recalibration`), so no width ever needs to be trained.

Statistics are fp32 and accumulate either as an EMA (`momentum`) or, during calibration, as a cumulative average.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dslim.errors import UserError
from dslim.nn.base import LayerCost, SlimModule, copy_
from dslim.subnet import Subnet


class _Stats(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))


class _Affine(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))


class SlimBatchNorm2d(SlimModule):
    """BatchNorm2d over the first `C` channels of whatever arrives, with per-subnet statistics.

    `key` (the active subnet's key) and `track` are set by the supernet.
    """

    def __init__(
        self, num_features: int, group: str | None, mode: str = "private", eps: float = 1e-5, momentum: float = 0.1
    ) -> None:
        super().__init__()
        if mode not in ("private", "switchable", "calibrated"):
            raise ValueError(f"unknown BatchNorm mode {mode!r}")
        self.num_features, self.group, self.mode, self.eps = num_features, group, mode, eps
        self.momentum: float | None = momentum
        if mode == "switchable":
            self.affine = nn.ModuleDict()
        else:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        self.stats = nn.ModuleDict()
        self.key: str | None = None
        self.track = mode != "calibrated"

    plain_type: type = nn.BatchNorm2d
    """The standard module it exports as."""

    def follow(self, subnet: Subnet) -> None:
        object.__setattr__(self, "key", subnet.key)

    def channels(self, subnet: Subnet) -> int:
        """Its channels at `subnet`."""
        return self.num_features if self.group is None else subnet[self.group]

    def front(self, t: torch.Tensor, channels: int) -> torch.Tensor:
        """The entries of a per-channel vector (an affine) for the `channels` that arrive."""
        return t if channels == t.shape[0] else t[:channels]

    def pick(self, t: torch.Tensor) -> torch.Tensor:
        """The entries of a wider supernet's per-channel vector this layer (built at a subnet's widths) holds."""
        return t[: self.num_features]

    def add_subnet(self, key: str, channels: int) -> None:
        """Allocate statistics (and, if switchable, an affine) for a subnet ahead of training."""
        if key not in self.stats:
            self.stats[key] = _Stats(channels)
        if self.mode == "switchable" and key not in self.affine:
            self.affine[key] = _Affine(channels)

    def affine_params(self, key: str | None, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mode == "switchable":
            if key not in self.affine:
                raise UserError(
                    "switchable BatchNorm has no affine for this subnet: S-Net subnets are fixed, "
                    "choose one of the recipe's widths"
                )
            a = self.affine[key]
            return a.weight, a.bias
        return self.front(self.weight, channels), self.front(self.bias, channels)

    def stats_for(self, key: str | None) -> _Stats | None:
        return self.stats[key] if key is not None and key in self.stats else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        weight, bias = self.affine_params(self.key, c)
        stats = self.stats_for(self.key)
        if self.training:
            if stats is None and self.track and self.key is not None:
                self.add_subnet(self.key, c)
                self.stats[self.key].to(x.device)
                stats = self.stats[self.key]
            if stats is not None and self.track:
                stats.num_batches_tracked.add_(1)
                factor = 1.0 / float(stats.num_batches_tracked) if self.momentum is None else self.momentum
                y = F.batch_norm(x, stats.running_mean, stats.running_var, weight, bias, True, factor, self.eps)
            else:
                y = F.batch_norm(x, None, None, weight, bias, True, 0.0, self.eps)
        else:
            if stats is None:
                raise UserError(
                    "no BatchNorm statistics for this subnet: run the bn_recalibration stage for it "
                    "(or evaluate with --widths that were calibrated)"
                )
            y = F.batch_norm(x, stats.running_mean, stats.running_var, weight, bias, False, 0.0, self.eps)
        return y

    def cost(self, x: torch.Tensor, y: torch.Tensor) -> tuple[LayerCost | None, int]:
        return None, 2 * x.shape[1]

    def copy_from(self, source: SlimModule, keys: Sequence[str]) -> None:
        assert isinstance(source, SlimBatchNorm2d)
        if self.mode != "switchable":
            copy_(self, weight=self.pick(source.weight), bias=self.pick(source.bias))
        for key in keys:
            stats = source.stats_for(key)
            if stats is None:
                raise UserError("a subnet to export has no BatchNorm statistics: run bn_recalibration for it first")
            self.add_subnet(key, stats.running_mean.numel())  # a narrower route keeps its own width
            self.stats[key].load_state_dict(stats.state_dict())
            if self.mode == "switchable":
                self.affine[key].load_state_dict(source.affine[key].state_dict())

    def to_plain(self, key: str | None) -> nn.Module:
        out = self.plain_type(self.num_features, eps=self.eps)
        stats = self.stats_for(key)
        if stats is not None:
            weight, bias = self.affine_params(key, self.num_features)
            copy_(out, weight=weight, bias=bias, running_mean=stats.running_mean, running_var=stats.running_var,
                  num_batches_tracked=stats.num_batches_tracked)  # fmt: skip
        return out

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):  # type: ignore[no-untyped-def]
        # Statistics of subnets calibrated after construction live only in the checkpoint: allocate them first.
        for name, value in state_dict.items():
            if name.startswith(prefix + "stats.") and name.endswith(".running_mean"):
                self.add_subnet(name[len(prefix + "stats.") : -len(".running_mean")], value.shape[0])
            if name.startswith(prefix + "affine.") and name.endswith(".weight"):
                self.add_subnet(name[len(prefix + "affine.") : -len(".weight")], value.shape[0])
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)

    def extra_repr(self) -> str:
        return f"{self.num_features}, group={self.group}, mode={self.mode}, subnets={len(self.stats)}"
