"""S-MobileNet v2 (Slimmable Networks, ICLR 2019): widths 0.35/0.5/0.75/1.0, switchable BatchNorm.

Original: batch 160, lr 0.045, exponential decay 0.98 per epoch, 480 epochs, SGD Nesterov, weight decay 1e-4.
"""

from dslim.config import replace
from dslim.recipes import load


def recipe():  # type: ignore[no-untyped-def]
    return replace(load("snet_mbv1"), **{"model.arch": "mobilenet_v2", "model.widths": (0.35, 0.5, 0.75, 1.0)})
