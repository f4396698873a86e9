"""US-MobileNet v2 (Universally Slimmable Networks, ICCV 2019): any width in [0.35, 1.0].

The original's `apps/us_mobilenet_v2_train_val.yml` differs from `usnet_mbv1`'s only in the model and its range;
evaluated on the 0.025 grid.
"""

from dslim.config import replace
from dslim.recipes import load

GRID = tuple(round(0.35 + 0.025 * i, 3) for i in range(27))


def recipe():  # type: ignore[no-untyped-def]
    return replace(
        load("usnet_mbv1"),
        **{"model.arch": "mobilenet_v2", "model.widths": GRID, "model.width_range": (0.35, 1.0)},
    )
