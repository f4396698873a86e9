"""Inverted-residual supernets from one table of stages: slimmable MobileNet v2 (S-/US-MobileNet v2; at
`max_width=1.5` the AutoSlim and DMCP base) and MNasNet (at `max_width=1.5` the AutoSlim-MNasNet base)."""

from __future__ import annotations

import torch
from torch import nn

from dslim.models.base import resolve_channels
from dslim.models.registry import register
from dslim.models.width import WidthSupernet
from dslim.nn import GlobalAvgPool, SlimBatchNorm2d, SlimConv2d, SlimLinear
from dslim.subnet import make_divisible

# (expansion, output channels, repeats, first stride, depthwise kernel)
STAGES = [(1, 16, 1, 1, 3), (6, 24, 2, 2, 3), (6, 32, 3, 2, 3), (6, 64, 4, 2, 3), (6, 96, 3, 1, 3), (6, 160, 3, 2, 3),
          (6, 320, 1, 1, 3)]  # fmt: skip


class InvertedResidual(nn.Module):
    """[expand 1x1 ->] depthwise k x k -> project 1x1, residual when the input and output are the same group."""

    def __init__(self, net: WidthSupernet, ch: dict[str, int], g_in: str, g_mid: str, g_out: str, stride: int,
                 kernel: int = 3) -> None:  # fmt: skip
        super().__init__()
        layers: list[nn.Module] = []
        if g_mid != g_in:
            layers += [
                SlimConv2d(ch[g_in], ch[g_mid], 1, in_group=g_in, out_group=g_mid),
                net.norm(ch[g_mid], g_mid),
                nn.ReLU6(inplace=True),
            ]
        layers += [
            SlimConv2d(ch[g_mid], ch[g_mid], kernel, stride, in_group=g_mid, out_group=g_mid, depthwise=True),
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
    """Groups: `stem`, one per stage `s0`..`s6` (tied by the residuals), one per expansion `b{i}.expand`, and with
    `prune_head` the last 1x1 conv's `head`.

    The last 1x1 conv has 1280 channels (more if `max_width > 1`) at every width multiplier, as in the model zoo.
    Without `prune_head` it keeps them in every subnet (S-/US-MobileNet v2); with it, it is a channel group of its
    own that searches and samplers prune like any other (the original DMCP prunes it by its own chain, and
    AutoSlim-MNasNet's configurations prune it).
    """

    arch = "mobilenet_v2"
    stages = STAGES

    def __init__(
        self,
        num_classes: int = 1000,
        max_width: float = 1.0,
        widths: tuple[float, ...] = (0.35, 0.5, 0.75, 1.0),
        width_range: tuple[float, float] | None = None,
        bn: str = "switchable",
        dropout: float = 0.0,
        channels: dict[str, int] | None = None,
        prune_head: bool = False,
    ) -> None:
        base, plan = {"stem": 32}, []
        prev = "stem"
        for s, (t, c, n, stride, k) in enumerate(self.stages):
            base[f"s{s}"] = c
            for j in range(n):
                g_in = prev if j == 0 else f"s{s}"
                g_mid = g_in if t == 1 else f"b{len(plan)}.expand"
                if t != 1:
                    base[g_mid] = t * base[g_in]
                plan.append((g_in, g_mid, f"s{s}", stride if j == 0 else 1, k))
            prev = f"s{s}"
        if prune_head:
            base["head"] = 1280
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
        self.arch_kwargs["prune_head"] = prune_head
        ch = resolve_channels({g: grp.max for g, grp in self.groups.items()}, channels)
        head = "head" if prune_head else None
        last = ch["head"] if prune_head else self.last_channels()
        self.stem = nn.Sequential(
            SlimConv2d(3, ch["stem"], 3, 2, in_group=None, out_group="stem"),
            self.norm(ch["stem"], "stem"),
            nn.ReLU6(inplace=True),
        )
        self.features = nn.Sequential(*(InvertedResidual(self, ch, *p) for p in plan))
        self.head = nn.Sequential(
            SlimConv2d(ch[prev], last, 1, in_group=prev, out_group=head),
            self.norm(last, head),
            nn.ReLU6(inplace=True),
        )
        self.pool = GlobalAvgPool(head)
        self.dropout = nn.Dropout(dropout)
        self.classifier = SlimLinear(last, num_classes, in_group=head)
        self.finish(allocate=channels is None)

    @classmethod
    def own_options(cls, cfg) -> dict:  # type: ignore[no-untyped-def]
        return {"prune_head": cfg.prune_head}

    def last_channels(self) -> int:
        """The last 1x1 conv's channels: 1280, or 1280 x `max_width` above width 1 (the zoo's rule)."""
        return make_divisible(1280 * self.max_width) if self.max_width > 1.0 else 1280

    def width_channels(self, width: float) -> dict[str, int]:
        out = {}
        for g in self.base:
            if g == "head":
                out[g] = self.last_channels()  # every width multiplier keeps the head at its full width
            elif g.endswith(".expand"):
                g_in = next(p[0] for p in self.plan if p[1] == g)
                out[g] = self.base[g] // self.base[g_in] * out[g_in]
            else:
                out[g] = make_divisible(self.base[g] * width)
        return out

    def soft_mask_sites(self) -> list[tuple[nn.Module, str]]:
        """The original DMCP's: inside a block after the ReLU6 that follows a BatchNorm (else after the BatchNorm);
        in the stem and the head after the BatchNorm, before the ReLU6."""
        sites = []
        for block in self.features:
            layers = list(block.body)
            for bn, after in zip(layers, [*layers[1:], None]):
                if isinstance(bn, SlimBatchNorm2d) and bn.group is not None:
                    sites.append((after if isinstance(after, nn.ReLU6) else bn, bn.group))
        return [(self.stem[1], "stem"), *sites, *([(self.head[1], "head")] if self.head[1].group else [])]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.pool(self.head(self.features(self.stem(x))))))


@register("mnasnet")
class MNasNet(MobileNetV2):
    """MNasNet (the B1 layout: expansion 3 in the 24- and 40-channel stages, 5x5 depthwise convs in three stages),
    the base of the slimmable networks' AutoSlim-MNasNet; groups as MobileNet v2's."""

    arch = "mnasnet"
    stages = [(1, 16, 1, 1, 3), (3, 24, 3, 2, 3), (3, 40, 3, 2, 5), (6, 80, 3, 2, 5), (6, 96, 2, 1, 3),
              (6, 192, 4, 2, 5), (6, 320, 1, 1, 3)]  # fmt: skip
