"""Squeeze-and-excitation with a static bottleneck, as in DS-Net."""

from __future__ import annotations

import torch
from torch import nn

from dslim.nn.layers import GlobalAvgPool, SlimConv2d


class SqueezeExcite(nn.Module):
    """Pool -> reduce conv (+bias) -> ReLU -> expand conv (+bias) -> sigmoid -> scale.

    The bottleneck width is fixed at construction (never sliced); the expand conv's output belongs to the input's
    group, so the block follows its input width. `squeeze` and `excite` are separate because DS-Net's gate reads the
    squeezed vector.
    """

    def __init__(self, channels: int, reduced: int, group: str | None) -> None:
        super().__init__()
        self.pool = GlobalAvgPool(group, flatten=False)
        self.reduce = SlimConv2d(channels, reduced, 1, in_group=group, out_group=None, bias=True)
        self.act = nn.ReLU(inplace=True)
        self.expand = SlimConv2d(reduced, channels, 1, in_group=None, out_group=group, bias=True)

    def squeeze(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.reduce(self.pool(x)))

    def excite(self, x: torch.Tensor, squeezed: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.expand(squeezed))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.excite(x, self.squeeze(x))
