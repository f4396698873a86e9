"""Slimmable ResNets: S-ResNet-50 of the slimmable-networks model zoo, and ResNet-18.

Channel counts follow the zoo's `int(c * width)` rule. Each stage's output channels are one group (the residual
stream); every block's inner convs have groups of their own so a search can prune them independently. Every
block can be skipped (`keep=False`), leaving its shortcut: BlockDrop's subnets.
"""

from __future__ import annotations

import torch
from torch import nn

from dslim.models.base import resolve_channels
from dslim.models.registry import register
from dslim.models.routing import run_blocks
from dslim.models.width import WidthSupernet
from dslim.nn import GlobalAvgPool, SlimConv2d, SlimLinear


class Block(nn.Module):
    """Basic (two 3x3) or bottleneck (1x1, 3x3, 1x1) residual block with a conv shortcut where shapes change."""

    def __init__(self, net: WidthSupernet, ch: dict[str, int], g_in: str, inner: list[str], g_out: str, stride: int):
        super().__init__()
        groups = [g_in, *inner, g_out]
        kernels = [3, 3] if len(inner) == 1 else [1, 3, 1]
        layers: list[nn.Module] = []
        strided = kernels.index(3)  # the first 3x3 conv downsamples, as in torchvision's ResNet v1.5
        for i, k in enumerate(kernels):
            a, b = groups[i], groups[i + 1]
            s = stride if i == strided else 1
            layers += [SlimConv2d(ch[a], ch[b], k, s, in_group=a, out_group=b), net.norm(ch[b], b)]
            if i < len(kernels) - 1:
                layers.append(nn.ReLU(inplace=True))
        self.body = nn.Sequential(*layers)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or g_in != g_out:
            self.shortcut = nn.Sequential(
                SlimConv2d(ch[g_in], ch[g_out], 1, stride, in_group=g_in, out_group=g_out), net.norm(ch[g_out], g_out)
            )
        self.relu = nn.ReLU(inplace=True)
        self.keep = True

    def run(self, x: torch.Tensor, keep: bool) -> torch.Tensor:
        """The block, or (skipped) its shortcut alone, without the final ReLU: BlockDrop's convention."""
        return self.relu(self.body(x) + self.shortcut(x)) if keep else self.shortcut(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x, self.keep)


class ResNet(WidthSupernet):
    depths: tuple[int, ...] = ()
    bottleneck = False

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
        expansion = 4 if self.bottleneck else 1
        base, plan, prev = {"stem": 64}, [], "stem"
        for s, n in enumerate(self.depths):
            # a basic-block net's first stage keeps the stem's width: one residual stream, identity shortcuts
            stage = "stem" if s == 0 and not self.bottleneck else f"s{s}"
            base[stage] = 64 * 2**s * expansion
            for j in range(n):
                b = len(plan)
                inner = [f"b{b}.mid1", f"b{b}.mid2"] if self.bottleneck else [f"b{b}.mid"]
                for g in inner:
                    base[g] = 64 * 2**s
                plan.append((prev, inner, stage, 2 if j == 0 and s > 0 else 1))
                prev = stage
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
            SlimConv2d(3, ch["stem"], 7, 2, in_group=None, out_group="stem"),
            self.norm(ch["stem"], "stem"),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        self.features = nn.Sequential(*(Block(self, ch, *p) for p in plan))
        self.blocks = list(self.features)
        self.pool = GlobalAvgPool(prev)
        self.dropout = nn.Dropout(dropout)
        self.classifier = SlimLinear(ch[prev], num_classes, in_group=prev)
        self.finish(allocate=channels is None)

    def width_channels(self, width: float) -> dict[str, int]:
        out = {}
        for g, c in self.base.items():
            # the zoo derives a bottleneck's inner width from its output width: int(4c * w) // 4
            out[g] = int(4 * c * width) // 4 if self.bottleneck and ".mid" in g else int(c * width)
        return out

    def round_channels(self, channels: float) -> int:
        return max(1, int(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.pool(self.features(self.stem(x)))))

    def forward_blocks(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Each image through the blocks its row of `keep` (`[N, blocks]`, bool) keeps, grouped per block."""
        return self.classifier(self.dropout(self.pool(run_blocks(self.blocks, self.stem(x), keep))))


@register("resnet18")
class ResNet18(ResNet):
    arch = "resnet18"
    depths = (2, 2, 2, 2)


@register("resnet50")
class ResNet50(ResNet):
    """S-ResNet-50."""

    arch = "resnet50"
    depths = (3, 4, 6, 3)
    bottleneck = True
