"""S-Net on the harder built-in set `digits-hard`: `snet_digits` (widths 0.25/0.5/0.75/1.0, switchable BatchNorm)
on images whose difficulty varies, where a wider network is worth more. `--model.widths 0.5` trains a network of
that one width alone, the baseline each switchable width is compared with (`scripts/bench_methods.py`).

16 epochs (about 9.5 CPU-minutes at 2 threads). At 8 the shared weights were still far behind (seed 0, 2
threads, width 0.25: 59.1% switchable against 64.5% alone); at 16 the switchable 0.25 is ahead of the one trained
alone (77.3 against 72.8, 1 thread), while the full width is still behind (81.5 against 83.5)."""

from dslim.config import replace
from dslim.data.digits_hard import READ_SETTINGS
from dslim.recipes import load


def recipe():  # type: ignore[no-untyped-def]
    return replace(load("snet_digits"), **READ_SETTINGS, **{"stages.supernet.epochs": 16})
