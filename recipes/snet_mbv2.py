"""S-MobileNet v2 (Slimmable Networks, ICLR 2019): widths 0.35/0.5/0.75/1.0, switchable BatchNorm.

The original's `apps/s_mobilenet_v2_train_val.yml` differs from `snet_mbv1`'s only in the model and its widths.
"""

from dslim.config import replace
from dslim.recipes import load


def recipe():  # type: ignore[no-untyped-def]
    return replace(load("snet_mbv1"), **{"model.arch": "mobilenet_v2", "model.widths": (0.35, 0.5, 0.75, 1.0)})
