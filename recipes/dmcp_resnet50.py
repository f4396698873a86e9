"""DMCP on ImageNet: ResNet-50 pruned to a MACs target (279M, 1.1G, 2.2G or 2.8G), then retrained.

The settings of `dmcp_resnet18` (Zx55/dmcp `config/res50` has the same): [0.1, 1.0, 0.1], 9 bins per chain, each
bottleneck conv sampled from its own chain. Default target 2.2G (`--stages.dmcp.target-macs 279e6` ... 2.8e9).
Published top-1: 68.3 @279M, 74.1 @1.1G, 76.5 @2.2G, 76.6 @2.8G.
"""

from dslim.config import replace
from dslim.recipes import load


def recipe():  # type: ignore[no-untyped-def]
    return replace(load("dmcp_resnet18"), **{"model.arch": "resnet50", "stages.dmcp.target_macs": 2.2e9})
