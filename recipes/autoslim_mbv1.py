"""AutoSlim (Yu & Huang, 2019) on ImageNet: MobileNet v1 x1.5 searched down to 570M / 325M / 150M MACs.

The settings of `autoslim_mbv2` (mmrazor's AutoSlim) on a 1.5x MobileNet v1, whose widest layers (1,536 channels)
hold the published configurations (up to 1,128). Published: 27.0 / 28.5 / 32.1 top-1 error at 572M / 325M / 150M.
"""

from dslim.config import replace
from dslim.recipes import load

WIDTHS = tuple(k / 8 for k in range(2, 13))


def recipe():  # type: ignore[no-untyped-def]
    return replace(
        load("autoslim_mbv2"),
        **{"model.arch": "mobilenet_v1", "model.widths": WIDTHS, "stages.search.targets": (570e6, 325e6, 150e6)},
    )
