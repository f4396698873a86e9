"""Slimmable MobileNet v2 (S-/US-MobileNet v2; at `max_width=1.5` the AutoSlim and DMCP base)."""

from __future__ import annotations

import torch
from torch import nn

from dslim.models.base import resolve_channels
from dslim.models.registry import register
from dslim.models.width import WidthSupernet
from dslim.nn import GlobalAvgPool, SlimConv2d, SlimLinear
from dslim.subnet import make_divisible

# (expansion, output channels, repeats, first stride)
STAGES = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


class InvertedResidual(nn.Module):
    """[expand 1x1 ->] depthwise 3x3 -> project 1x1, residual when the input and output are the same group."""

    def __init__(self, net: WidthSupernet, ch: dict[str, int], g_in: str, g_mid: str, g_out: str, stride: int):
        super().__init__()
        layers: list[nn.Module] = []
        if g_mid != g_in:
            layers += [
                SlimConv2d(ch[g_in], ch[g_mid], 1, in_group=g_in, out_group=g_mid),
                net.norm(ch[g_mid], g_mid),
                nn.ReLU6(inplace=True),
            ]
        layers += [
            SlimConv2d(ch[g_mid], ch[g_mid], 3, stride, in_group=g_mid, out_group=g_mid, depthwise=True),
            net.norm(ch[g_mid], g_mid),
            nn.ReLU6(inplace=True),
            SlimConv2d(ch[g_mid], ch[g_out], 1, in_group=g_mid, out_group=g_out),
            net.norm(ch[g_out], g_out),
        ]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and g_in == g_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


@register("mobilenet_v2")
class MobileNetV2(WidthSupernet):
    """Groups: `stem`, one per stage `s0`..`s6` (tied by the residuals), one per expansion `b{i}.expand`.

    The 1x1 conv before pooling keeps 1280 channels (more if `max_width > 1`), as in the model zoo.
    """

    arch = "mobilenet_v2"

    def __init__(
        self,
        num_classes: int = 1000,
        max_width: float = 1.0,
        widths: tuple[float, ...] = (0.35, 0.5, 0.75, 1.0),
        width_range: tuple[float, float] | None = None,
        bn: str = "switchable",
        dropout: float = 0.0,
        channels: dict[str, int] | None = None,
    ) -> None:
        base, plan = {"stem": 32}, []
        prev = "stem"
        for s, (t, c, n, stride) in enumerate(STAGES):
            base[f"s{s}"] = c
            for j in range(n):
                g_in = prev if j == 0 else f"s{s}"
                g_mid = g_in if t == 1 else f"b{len(plan)}.expand"
                if t != 1:
                    base[g_mid] = t * base[g_in]
                plan.append((g_in, g_mid, f"s{s}", stride if j == 0 else 1))
            prev = f"s{s}"
        self.plan = plan
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
        last = make_divisible(1280 * max_width) if max_width > 1.0 else 1280
        self.stem = nn.Sequential(
            SlimConv2d(3, ch["stem"], 3, 2, in_group=None, out_group="stem"),
            self.norm(ch["stem"], "stem"),
            nn.ReLU6(inplace=True),
        )
        self.features = nn.Sequential(*(InvertedResidual(self, ch, *p) for p in plan))
        self.head = nn.Sequential(
            SlimConv2d(ch[prev], last, 1, in_group=prev, out_group=None),
            self.norm(last, None),
            nn.ReLU6(inplace=True),
        )
        self.pool = GlobalAvgPool(None)
        self.dropout = nn.Dropout(dropout)
        self.classifier = SlimLinear(last, num_classes, in_group=None)
        self.finish(allocate=channels is None)

    def width_channels(self, width: float) -> dict[str, int]:
        out = {}
        for g in self.base:
            if g.endswith(".expand"):
                g_in = next(p[0] for p in self.plan if p[1] == g)
                out[g] = self.base[g] // self.base[g_in] * out[g_in]
            else:
                out[g] = make_divisible(self.base[g] * width)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.pool(self.head(self.features(self.stem(x))))))
