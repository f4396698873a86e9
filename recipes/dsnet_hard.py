"""DS-Net on the harder built-in set `digits-hard` (`dslim.data.digits_hard`): `dsnet_digits`'s stages and settings on
images whose difficulty varies, so that a gate has a reason to send some images to wider routes than others.

Read as `READ_SETTINGS` says (2-pixel shifts, the whole image at evaluation); twice the digits' training images.

No label smoothing in the supernet stage (DS-Net's is 0.1): at the start three of the four passes of a step learn
from the largest's softmax, which is still near uniform, and smoothing pulls the largest towards uniform too. With
it, the largest's top-1 after the warm-up epoch of a 3-epoch run (`tests/test_hard_recipes.py`) was 9.5 (seed 0, 1
thread), 29.0 (2 threads) and 19.0 (seed 1, 1 thread); without it 25.6, 23.9 and 33.4.
"""

from dslim.config import replace
from dslim.data.digits_hard import READ_SETTINGS
from dslim.recipes import load


def recipe():  # type: ignore[no-untyped-def]
    return replace(
        load("dsnet_digits"),
        **READ_SETTINGS,
        **{"stages.supernet.epochs": 10, "stages.supernet.label_smoothing": 0.0, "stages.gate.epochs": 3},
    )
