"""US-Net on the harder built-in set `digits-hard`: `usnet_digits` (any width in [0.25, 1.0], sandwich rule,
in-place distillation, BN calibration) on images whose difficulty varies. Widths between the named ones are
calibrated on the fly by `python -m dslim.evaluate --run D --widths 0.3 0.6 ...`.

16 epochs (about 10 CPU-minutes at 2 threads). Seed 0, 1 thread, top-1 at widths 0.25 / 0.375 / 0.5 / 1.0: 8
epochs 62.7 / 59.4 / 62.7 / 74.4 (2 threads); 12 epochs with two random widths per step (the original's four
subnets) 66.7 / 65.3 / 66.4 / 73.1; 16 epochs with one 77.2 / 74.1 / 75.5 / 84.5. In every run the smallest width,
trained at every step, beats the widths just above it, which are trained only when drawn."""

from dslim.config import replace
from dslim.data.digits_hard import READ_SETTINGS
from dslim.recipes import load


def recipe():  # type: ignore[no-untyped-def]
    return replace(load("usnet_digits"), **READ_SETTINGS, **{"stages.supernet.epochs": 16})
