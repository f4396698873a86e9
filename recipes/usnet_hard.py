"""US-Net on the harder built-in set `digits-hard`: `usnet_digits` (any width in [0.25, 1.0], sandwich rule,
in-place distillation, BN calibration) on images whose difficulty varies. Widths between the named ones are
calibrated on the fly by `python -m dslim.evaluate --run D --widths 0.3 0.6 ...`."""

from dslim.config import replace
from dslim.data.digits_hard import READ_SETTINGS
from dslim.recipes import load


def recipe():  # type: ignore[no-untyped-def]
    return replace(load("usnet_digits"), **READ_SETTINGS, **{"stages.supernet.epochs": 8})
