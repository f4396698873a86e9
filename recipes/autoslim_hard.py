"""AutoSlim on the harder built-in set `digits-hard`: `autoslim_digits`'s pipeline (supernet, greedy search on 300
held-out training images, joint retraining of the found subnets, evaluation, export) on images whose difficulty
varies. The targets stay just below the uniform widths 0.75, 0.5 and 0.375, which `scripts/bench_methods.py`
retrains the same way to compare.

No label smoothing in the retraining (AutoSlim's is 0.1), for the same reason as `dsnet_hard`'s supernet: retraining
seed 1's found subnets at 1 thread, the 6M one's top-1 by epoch began 10.0, 12.6, 30.8 with it (ending at 63.1%)
and 10.4, 19.8, 38.4 without it (ending at 67.8%); at 2 threads with it, 10.0, 13.8, 13.6."""

from dslim.config import replace
from dslim.data.digits_hard import READ_SETTINGS
from dslim.recipes import load


def recipe():  # type: ignore[no-untyped-def]
    return replace(
        load("autoslim_digits"),
        **READ_SETTINGS,
        **{"stages.supernet.epochs": 8, "stages.retrain.epochs": 8, "stages.retrain.label_smoothing": 0.0},
    )
