"""BlockDrop on the harder built-in set `digits-hard`: `blockdrop_digits`'s stages (ResNet-32 pre-trained with
stochastic depth, the policy's curriculum, joint fine-tuning) on images whose difficulty varies, so that easy
images can skip blocks hard ones need."""

from dslim.config import replace
from dslim.data.digits_hard import READ_SETTINGS
from dslim.recipes import load


def recipe():  # type: ignore[no-untyped-def]
    return replace(load("blockdrop_digits"), **READ_SETTINGS)
