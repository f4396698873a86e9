"""CIFAR ResNets (He et al. 2016, section 4.2): BlockDrop's CIFAR bases ResNet-32 and ResNet-110.

A 3x3 stem conv to 16 channels, then three stages of `n` basic blocks at 16, 32 and 64 channels (the second and
third start with stride 2), global average pooling and a linear classifier: `6n + 2` layers. At a stage change the
shortcut has no parameters: a stride-2 average pool and zero channels appended (`ZeroPadShortcut`, BlockDrop's
`DownsampleB`). Blocks are numbered over all stages (ResNet-32: 15, ResNet-110: 54), each skippable.

Widths are fixed: every channel group has a single choice, and the one named subnet is `largest`. With
`block_policy=True` the network carries BlockDrop's CIFAR policy network (`dslim.models.policy`): a ResNet-8 (one
block per stage) on the 32x32 image.
"""

from __future__ import annotations

import torch
from torch import nn

from dslim.config import ModelConfig
from dslim.models.base import Supernet, resolve_channels
from dslim.models.policy import PolicyNet, PolicyRouting
from dslim.models.registry import register
from dslim.models.resnet import Block, Norm
from dslim.nn import GlobalAvgPool, SlimConv2d, SlimLinear
from dslim.subnet import ChannelGroup, Subnet

WIDTHS = (16, 32, 64)


def cifar_stem(norm: Norm, channels: int, group: str | None) -> nn.Sequential:
    """3x3 conv, BN, ReLU at full resolution."""
    conv = SlimConv2d(3, channels, 3, 1, in_group=None, out_group=group)
    return nn.Sequential(conv, norm(channels, group), nn.ReLU(inplace=True))


def cifar_policy(norm: Norm, num_blocks: int) -> PolicyNet:
    """BlockDrop's CIFAR policy: a ResNet-8 (one basic block per stage) on the image."""
    blocks, prev = [], WIDTHS[0]
    for s, width in enumerate(WIDTHS):
        blocks.append(Block(norm, [prev, width, width], [None] * 3, 1 if s == 0 else 2, shortcut="pad"))
        prev = width
    return PolicyNet(cifar_stem(norm, WIDTHS[0], None), nn.Sequential(*blocks), prev, num_blocks)


class CifarResNet(PolicyRouting, Supernet):
    depth: int = 0
    """Basic blocks per stage."""

    def __init__(
        self,
        num_classes: int = 10,
        bn: str = "private",
        block_policy: bool = False,
        channels: dict[str, int] | None = None,
    ) -> None:
        base, plan, prev = {}, [], "s0"
        for s, width in enumerate(WIDTHS):
            base[f"s{s}"] = width  # the stage's residual stream (stage 0's includes the stem)
            for j in range(self.depth):
                mid = f"b{len(plan)}.mid"
                base[mid] = width
                plan.append(([prev, mid, f"s{s}"], 2 if j == 0 and s > 0 else 1))
                prev = f"s{s}"
        groups = [ChannelGroup(g, c, (c,)) for g, c in base.items()]
        super().__init__(groups, bn, dict(num_classes=num_classes, bn=bn, block_policy=block_policy))
        ch = resolve_channels(base, channels)
        self.stem = cifar_stem(self.norm, ch["s0"], "s0")
        blocks = (Block(self.norm, [ch[g] for g in gs], gs, stride, shortcut="pad") for gs, stride in plan)
        self.features = nn.Sequential(*blocks)
        self.blocks = list(self.features)
        self.pool = GlobalAvgPool(prev)
        self.classifier = SlimLinear(ch[prev], num_classes, in_group=prev)
        self.policy = cifar_policy(self.norm, len(self.blocks)) if block_policy else None
        self.finish(allocate=channels is None)

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> CifarResNet:
        return cls(num_classes=cfg.num_classes, bn=cfg.bn, block_policy=cfg.block_policy)

    def builtin_subnets(self) -> dict[str, Subnet]:
        return {"largest": self.largest()}

    def smallest(self) -> Subnet:
        return self.largest()

    def static_kwargs(self) -> dict:
        return {**self.arch_kwargs, "block_policy": False}  # a static subnet has no use for the policy

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(x))


@register("cifar_resnet32")
class CifarResNet32(CifarResNet):
    arch = "cifar_resnet32"
    depth = 5


@register("cifar_resnet110")
class CifarResNet110(CifarResNet):
    arch = "cifar_resnet110"
    depth = 18
