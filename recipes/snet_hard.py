"""S-Net on the harder built-in set `digits-hard`: `snet_digits` (widths 0.25/0.5/0.75/1.0, switchable BatchNorm)
on images whose difficulty varies, where a wider network is worth more. `--model.widths 0.5` trains a network of
that one width alone, the baseline each switchable width is compared with (`scripts/bench_methods.py`)."""

from dslim.config import replace
from dslim.data.digits_hard import READ_SETTINGS
from dslim.recipes import load


def recipe():  # type: ignore[no-untyped-def]
    return replace(load("snet_digits"), **READ_SETTINGS, **{"stages.supernet.epochs": 8})
