"""Slimmable ResNets: S-ResNet-50 of the slimmable-networks model zoo, ResNet-18 and ResNet-101.

Channel counts follow the zoo's `int(c * width)` rule. Each stage's output channels are one group (the residual
stream); every block's inner convs have groups of their own so a search can prune them independently. Every
block can be skipped (`keep=False`), leaving its shortcut: BlockDrop's subnets. With `block_policy=True` the
network carries BlockDrop's ImageNet policy network (`dslim.models.policy`): a ResNet-10 on the image
average-pooled to half its size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import nn

from dslim.models.base import resolve_channels
from dslim.models.policy import PolicyNet, PolicyRouting
from dslim.models.registry import register
from dslim.models.width import WidthSupernet
from dslim.nn import GlobalAvgPool, SlimConv2d, SlimLinear, ZeroPadShortcut

Norm = Callable[[int, "str | None"], nn.Module]


class Block(nn.Module):
    """Basic (two 3x3) or bottleneck (1x1, 3x3, 1x1) residual block.

    `channels` are its widths `[in, inner..., out]`, `groups` their channel groups (None: a fixed width). Where
    the shape changes, the shortcut is a strided 1x1 conv + BN (`conv`: ImageNet ResNets) or, without parameters,
    an average pool and zero channels (`pad`: CIFAR ResNets, "option A").
    """

    def __init__(
        self,
        norm: Norm,
        channels: Sequence[int],
        groups: Sequence[str | None],
        stride: int,
        shortcut: Literal["conv", "pad"] = "conv",
    ) -> None:
        super().__init__()
        kernels = [3, 3] if len(channels) == 3 else [1, 3, 1]
        layers: list[nn.Module] = []
        strided = kernels.index(3)  # the first 3x3 conv downsamples, as in torchvision's ResNet v1.5
        for i, k in enumerate(kernels):
            a, b = groups[i], groups[i + 1]
            s = stride if i == strided else 1
            conv = SlimConv2d(channels[i], channels[i + 1], k, s, in_group=a, out_group=b)
            layers += [conv, norm(channels[i + 1], b)]
            if i < len(kernels) - 1:
                layers.append(nn.ReLU(inplace=True))
        self.body = nn.Sequential(*layers)
        (c_in, g_in), (c_out, g_out) = (channels[0], groups[0]), (channels[-1], groups[-1])
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or g_in != g_out or c_in != c_out:
            if shortcut == "pad":
                self.shortcut = ZeroPadShortcut(c_out, stride, in_group=g_in, out_group=g_out)
            else:
                conv = SlimConv2d(c_in, c_out, 1, stride, in_group=g_in, out_group=g_out)
                self.shortcut = nn.Sequential(conv, norm(c_out, g_out))
        self.relu = nn.ReLU(inplace=True)
        self.keep = True

    def run(self, x: torch.Tensor, keep: bool) -> torch.Tensor:
        """The block, or (skipped) its shortcut alone, without the final ReLU: BlockDrop's convention."""
        return self.relu(self.body(x) + self.shortcut(x)) if keep else self.shortcut(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x, self.keep)


def imagenet_stem(norm: Norm, channels: int, group: str | None) -> nn.Sequential:
    """7x7 stride-2 conv, BN, ReLU, 3x3 stride-2 max pool."""
    conv = SlimConv2d(3, channels, 7, 2, in_group=None, out_group=group)
    return nn.Sequential(conv, norm(channels, group), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))


def imagenet_policy(norm: Norm, num_blocks: int) -> PolicyNet:
    """BlockDrop's ImageNet policy: a ResNet-10 (one basic block per stage, 64..512 channels) on the image
    average-pooled by 2 (224 -> 112)."""
    blocks, prev = [], 64
    for s, width in enumerate((64, 128, 256, 512)):
        blocks.append(Block(norm, [prev, width, width], [None] * 3, 1 if s == 0 else 2))
        prev = width
    return PolicyNet(imagenet_stem(norm, 64, None), nn.Sequential(*blocks), prev, num_blocks, downsample=2)


class ResNet(PolicyRouting, WidthSupernet):
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
        block_policy: bool = False,
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
                plan.append(([prev, *inner, stage], 2 if j == 0 and s > 0 else 1))
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
        self.arch_kwargs["block_policy"] = block_policy
        ch = resolve_channels({g: grp.max for g, grp in self.groups.items()}, channels)
        self.stem = imagenet_stem(self.norm, ch["stem"], "stem")
        self.features = nn.Sequential(*(Block(self.norm, [ch[g] for g in gs], gs, stride) for gs, stride in plan))
        self.blocks = list(self.features)
        self.pool = GlobalAvgPool(prev)
        self.dropout = nn.Dropout(dropout)
        self.classifier = SlimLinear(ch[prev], num_classes, in_group=prev)
        self.policy = imagenet_policy(self.norm, len(self.blocks)) if block_policy else None
        self.finish(allocate=channels is None)

    @classmethod
    def own_options(cls, cfg) -> dict:  # type: ignore[no-untyped-def]
        return {"block_policy": cfg.block_policy}

    def static_kwargs(self) -> dict:
        return {**self.arch_kwargs, "block_policy": False}  # a static subnet has no use for the policy

    def width_channels(self, width: float) -> dict[str, int]:
        out = {}
        for g, c in self.base.items():
            # the zoo derives a bottleneck's inner width from its output width: int(4c * w) // 4
            out[g] = int(4 * c * width) // 4 if self.bottleneck and ".mid" in g else int(c * width)
        return out

    def round_channels(self, channels: float) -> int:
        return max(1, int(channels))

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.pool(x)))


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


@register("resnet101")
class ResNet101(ResNet):
    """ResNet-101 (torchvision's v1.5 layout): BlockDrop's ImageNet base, 33 bottleneck blocks."""

    arch = "resnet101"
    depths = (3, 4, 23, 3)
    bottleneck = True
