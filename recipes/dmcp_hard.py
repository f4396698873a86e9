"""DMCP on the harder built-in set `digits-hard`: `dmcp_digits`'s pipeline (sandwich pre-training, the dmcp stage,
sampling the expected subnet at 3M MACs, retraining it, evaluation, export) on images whose difficulty varies."""

from dslim.config import replace
from dslim.data.digits_hard import READ_SETTINGS
from dslim.recipes import load


def recipe():  # type: ignore[no-untyped-def]
    return replace(load("dmcp_digits"), **READ_SETTINGS, **{"stages.dmcp.epochs": 6, "stages.retrain.epochs": 10})
