"""Slimmable MobileNet v1 (S-MobileNet v1 / US-MobileNet v1 of the slimmable-networks model zoo)."""

from __future__ import annotations

import torch
from torch import nn

from dslim.models.base import resolve_channels
from dslim.models.registry import register
from dslim.models.width import WidthSupernet
from dslim.nn import GlobalAvgPool, SlimConv2d, SlimLinear
from dslim.subnet import make_divisible

# (output channels, repeats, first stride) of the depthwise-separable stages
STAGES = [(64, 1, 1), (128, 2, 2), (256, 2, 2), (512, 6, 2), (1024, 2, 2)]


class DepthwiseSeparable(nn.Sequential):
    def __init__(self, net: WidthSupernet, c_in: int, c_out: int, stride: int, g_in: str, g_out: str) -> None:
        super().__init__(
            SlimConv2d(c_in, c_in, 3, stride, in_group=g_in, out_group=g_in, depthwise=True),
            net.norm(c_in, g_in),
            nn.ReLU6(inplace=True),
            SlimConv2d(c_in, c_out, 1, in_group=g_in, out_group=g_out),
            net.norm(c_out, g_out),
            nn.ReLU6(inplace=True),
        )


@register("mobilenet_v1")
class MobileNetV1(WidthSupernet):
    """Stem conv 3x3/2 then 13 depthwise-separable blocks with ReLU6; every block's output is its own group."""

    arch = "mobilenet_v1"

    def __init__(
        self,
        num_classes: int = 1000,
        max_width: float = 1.0,
        widths: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0),
        width_range: tuple[float, float] | None = None,
        bn: str = "switchable",
        dropout: float = 0.0,
        channels: dict[str, int] | None = None,
    ) -> None:
        base = {"stem": 32}
        for c, n, _ in STAGES:
            for _ in range(n):
                base[f"b{len(base)}"] = c
        super().__init__(
            base,
            num_classes=num_classes,
            max_width=max_width,
            widths=widths,
            width_range=width_range,
            bn=bn,
            dropout=dropout,
            channels=channels,
        )
        ch = resolve_channels({g: grp.max for g, grp in self.groups.items()}, channels)
        self.stem = nn.Sequential(
            SlimConv2d(3, ch["stem"], 3, 2, in_group=None, out_group="stem"),
            self.norm(ch["stem"], "stem"),
            nn.ReLU6(inplace=True),
        )
        blocks, prev, i = [], "stem", 1
        for _, n, stride in STAGES:
            for j in range(n):
                g = f"b{i}"
                blocks.append(DepthwiseSeparable(self, ch[prev], ch[g], stride if j == 0 else 1, prev, g))
                prev, i = g, i + 1
        self.features = nn.Sequential(*blocks)
        self.pool = GlobalAvgPool(prev)
        self.dropout = nn.Dropout(dropout)
        self.classifier = SlimLinear(ch[prev], num_classes, in_group=prev)
        self.finish(allocate=channels is None)

    def width_channels(self, width: float) -> dict[str, int]:
        return {g: make_divisible(c * width) for g, c in self.base.items()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.pool(self.features(self.stem(x)))))
