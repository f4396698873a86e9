"""Slimmable convolution, linear, pooling and zero-padding shortcut layers.

A layer slices its weights from the front to the channels it is given: the input width is whatever tensor arrives
(`x.shape[1]`), the output width is `active_out`, set from the subnet's channel group by `follow` and left alone
until the next subnet is set. `in_group` / `out_group` name the channel groups for the complexity model; `None`
means a fixed width (the image's 3 channels, the classes, an SE bottleneck).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dslim.nn.base import LayerCost, SlimModule, copy_
from dslim.subnet import Subnet


def same_padding(kernel_size: int, stride: int) -> int:
    """Padding `((s-1)+(k-1))//2`, the DS-Net/timm convention; equals k//2 for the odd kernels used here."""
    return ((stride - 1) + (kernel_size - 1)) // 2


class SlimConv2d(nn.Conv2d, SlimModule):
    """Conv2d whose output channels follow `out_group`; depthwise convs follow their input instead."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        *,
        in_group: str | None,
        out_group: str | None,
        depthwise: bool = False,
        bias: bool = False,
    ) -> None:
        if depthwise:
            assert in_channels == out_channels and in_group == out_group, "a depthwise conv keeps its group"
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            same_padding(kernel_size, stride),
            groups=in_channels if depthwise else 1,
            bias=bias,
        )
        self.in_group, self.out_group, self.depthwise = in_group, out_group, depthwise
        self.active_out: int | None = None

    def follow(self, subnet: Subnet) -> None:
        # a plain attribute write: nn.Module.__setattr__'s bookkeeping is most of set_subnet's cost at batch 1
        object.__setattr__(self, "active_out", None if self.out_group is None else subnet[self.out_group])

    def out_width(self, x: torch.Tensor) -> int:
        if self.depthwise:
            return x.shape[1]
        return self.out_channels if self.active_out is None else self.active_out

    def sliced(self, in_channels: int, out_channels: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The weight and bias of the `in_channels -> out_channels` sub-layer."""
        if out_channels == self.out_channels and (in_channels == self.in_channels or self.depthwise):
            return self.weight, self.bias  # the whole layer: no slicing views to make at every call
        weight = self.weight[:out_channels] if self.depthwise else self.weight[:out_channels, :in_channels]
        return weight, None if self.bias is None else self.bias[:out_channels]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c_in = x.shape[1]
        weight, bias = self.sliced(c_in, self.out_width(x))
        return F.conv2d(x, weight, bias, self.stride, self.padding, 1, c_in if self.depthwise else 1)

    def cost(self, x: torch.Tensor, y: torch.Tensor) -> tuple[LayerCost, int]:
        c_in, c_out = x.shape[1], y.shape[1]
        k = self.kernel_size[0] * self.kernel_size[1]
        kind = "per_input" if self.depthwise else "dense"
        params = c_out * (1 if self.depthwise else c_in) * k + (c_out if self.bias is not None else 0)
        return LayerCost(kind, self.in_group, self.out_group, c_in, c_out, k * y.shape[2] * y.shape[3]), params

    def copy_from(self, source: SlimModule, keys: Sequence[str]) -> None:
        weight, bias = source.sliced(self.in_channels, self.out_channels)  # type: ignore[attr-defined]
        copy_(self, weight=weight, bias=bias)

    def to_plain(self, key: str | None) -> nn.Module:
        out = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                        groups=self.groups, bias=self.bias is not None)  # fmt: skip
        copy_(out, weight=self.weight, bias=self.bias)
        return out


class SlimLinear(nn.Linear, SlimModule):
    """Linear layer reading as many inputs as arrive; outputs follow `out_group` (None: all, e.g. classes)."""

    def __init__(
        self, in_features: int, out_features: int, *, in_group: str | None, out_group: str | None = None
    ) -> None:
        super().__init__(in_features, out_features)
        self.in_group, self.out_group = in_group, out_group
        self.active_out: int | None = None

    def follow(self, subnet: Subnet) -> None:
        object.__setattr__(self, "active_out", None if self.out_group is None else subnet[self.out_group])

    def sliced(self, in_features: int, out_features: int) -> tuple[torch.Tensor, torch.Tensor]:
        if (in_features, out_features) == (self.in_features, self.out_features):
            return self.weight, self.bias
        return self.weight[:out_features, :in_features], self.bias[:out_features]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.out_features if self.active_out is None else self.active_out
        return F.linear(x, *self.sliced(x.shape[-1], out))

    def cost(self, x: torch.Tensor, y: torch.Tensor) -> tuple[LayerCost, int]:
        c_in, c_out = x.shape[-1], y.shape[-1]
        return LayerCost("dense", self.in_group, self.out_group, c_in, c_out, 1), c_in * c_out + c_out

    def copy_from(self, source: SlimModule, keys: Sequence[str]) -> None:
        copy_(self, **dict(zip(("weight", "bias"), source.sliced(self.in_features, self.out_features))))  # type: ignore[attr-defined]

    def to_plain(self, key: str | None) -> nn.Module:
        out = nn.Linear(self.in_features, self.out_features)
        copy_(out, weight=self.weight, bias=self.bias)
        return out


class GlobalAvgPool(SlimModule):
    """Global average pooling to `N x C` (or `N x C x 1 x 1`) that knows its channel group: it costs C*H*W."""

    def __init__(self, group: str | None, flatten: bool = True) -> None:
        super().__init__()
        self.group, self.flatten = group, flatten

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3), keepdim=not self.flatten)

    def cost(self, x: torch.Tensor, y: torch.Tensor) -> tuple[LayerCost, int]:
        c = x.shape[1]
        return LayerCost("per_input", self.group, self.group, c, c, x.shape[2] * x.shape[3]), 0


class ZeroPadShortcut(SlimModule):
    """The parameter-free shortcut of CIFAR ResNets at a stage change: average pool by `stride`, then zero channels
    appended up to the output group's width ("option A" of He et al., BlockDrop's `DownsampleB`).

    Its pooling costs the pooled input's elements, as every average pool here.
    """

    def __init__(self, out_channels: int, stride: int, in_group: str | None, out_group: str | None) -> None:
        super().__init__()
        self.out_channels, self.stride = out_channels, stride
        self.in_group, self.out_group = in_group, out_group
        self.active_out: int | None = None

    def follow(self, subnet: Subnet) -> None:
        object.__setattr__(self, "active_out", None if self.out_group is None else subnet[self.out_group])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = F.avg_pool2d(x, self.stride)
        out = self.out_channels if self.active_out is None else self.active_out
        # int(): a tracing exporter (torchscript) records the channel count as a constant rather than a chain of
        # Shape, Gather and Concat ops computed on every call; the channel count of a built network never changes.
        return F.pad(x, (0, 0, 0, 0, 0, out - int(x.shape[1])))

    def cost(self, x: torch.Tensor, y: torch.Tensor) -> tuple[LayerCost | None, int]:
        if self.stride == 1:
            return None, 0
        c = x.shape[1]
        return LayerCost("per_input", self.in_group, self.in_group, c, c, x.shape[2] * x.shape[3]), 0
