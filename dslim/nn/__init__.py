"""Slimmable building blocks: every layer slices its weights to the subnet the supernet sets."""

from dslim.nn.batchnorm import SlimBatchNorm2d
from dslim.nn.layers import GlobalAvgPool, SlimConv2d, SlimLinear, same_padding
from dslim.nn.se import SqueezeExcite

__all__ = ["GlobalAvgPool", "SlimBatchNorm2d", "SlimConv2d", "SlimLinear", "SqueezeExcite", "same_padding"]
