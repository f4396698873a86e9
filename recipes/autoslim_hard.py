"""AutoSlim on the harder built-in set `digits-hard`: `autoslim_digits`'s pipeline (supernet, greedy search on 300
held-out training images, joint retraining of the found subnets, evaluation, export) on images whose difficulty
varies. The targets stay just below the uniform widths 0.75, 0.5 and 0.375, which `scripts/bench_methods.py`
retrains the same way to compare."""

from dslim.config import replace
from dslim.data.digits_hard import READ_SETTINGS
from dslim.recipes import load


def recipe():  # type: ignore[no-untyped-def]
    return replace(
        load("autoslim_digits"), **READ_SETTINGS, **{"stages.supernet.epochs": 8, "stages.retrain.epochs": 8}
    )
