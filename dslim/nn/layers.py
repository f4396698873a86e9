"""Slimmable convolution, linear and pooling layers.

A layer slices its weights from the front to the channels it is given: the input width is whatever tensor arrives
(`x.shape[1]`), the output width is `active_out`, set by the supernet from the subnet's channel group and left
alone until the next subnet is set. `in_group` / `out_group` name the channel groups for the complexity model;
`None` means a fixed width (the image's 3 channels, the classes, an SE bottleneck).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def same_padding(kernel_size: int, stride: int) -> int:
    """Padding `((s-1)+(k-1))//2`, the DS-Net/timm convention; equals k//2 for the odd kernels used here."""
    return ((stride - 1) + (kernel_size - 1)) // 2


class SlimConv2d(nn.Conv2d):
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

    def out_width(self, x: torch.Tensor) -> int:
        if self.depthwise:
            return x.shape[1]
        return self.out_channels if self.active_out is None else self.active_out

    def sliced(self, in_channels: int, out_channels: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The weight and bias of the `in_channels -> out_channels` sub-layer."""
        weight = self.weight[:out_channels] if self.depthwise else self.weight[:out_channels, :in_channels]
        return weight, None if self.bias is None else self.bias[:out_channels]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c_in = x.shape[1]
        weight, bias = self.sliced(c_in, self.out_width(x))
        return F.conv2d(x, weight, bias, self.stride, self.padding, 1, c_in if self.depthwise else 1)


class SlimLinear(nn.Linear):
    """Linear layer reading as many inputs as arrive; outputs follow `out_group` (None: all, e.g. classes)."""

    def __init__(
        self, in_features: int, out_features: int, *, in_group: str | None, out_group: str | None = None
    ) -> None:
        super().__init__(in_features, out_features)
        self.in_group, self.out_group = in_group, out_group
        self.active_out: int | None = None

    def sliced(self, in_features: int, out_features: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.weight[:out_features, :in_features], self.bias[:out_features]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.out_features if self.active_out is None else self.active_out
        return F.linear(x, *self.sliced(x.shape[-1], out))


class GlobalAvgPool(nn.AdaptiveAvgPool2d):
    """Global average pooling to `N x C` that knows its channel group (its MACs are counted: C*H*W)."""

    def __init__(self, group: str | None, flatten: bool = True) -> None:
        super().__init__(1)
        self.group, self.flatten = group, flatten

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.mean((2, 3), keepdim=not self.flatten)
        return y
