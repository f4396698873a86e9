"""Slimmable building blocks: every layer slices its weights to the subnet the supernet sets."""

from dslim.nn.base import LayerCost, SlimModule, slim_layers
from dslim.nn.batchnorm import SlimBatchNorm2d
from dslim.nn.layers import GlobalAvgPool, SlimConv2d, SlimLinear, ZeroPadShortcut, same_padding
from dslim.nn.se import SqueezeExcite

__all__ = [
    "GlobalAvgPool",
    "LayerCost",
    "SlimBatchNorm2d",
    "SlimConv2d",
    "SlimLinear",
    "SlimModule",
    "SqueezeExcite",
    "ZeroPadShortcut",
    "same_padding",
    "slim_layers",
]
