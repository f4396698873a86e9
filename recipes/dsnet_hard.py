"""DS-Net on the harder built-in set `digits-hard` (`dslim.data.digits_hard`): `dsnet_digits`'s stages and settings on
images whose difficulty varies, so that a gate has a reason to send some images to wider routes than others.

Read as `READ_SETTINGS` says (2-pixel shifts, the whole image at evaluation); twice the digits' training images.
"""

from dslim.config import replace
from dslim.data.digits_hard import READ_SETTINGS
from dslim.recipes import load


def recipe():  # type: ignore[no-untyped-def]
    return replace(load("dsnet_digits"), **READ_SETTINGS, **{"stages.supernet.epochs": 10, "stages.gate.epochs": 3})
