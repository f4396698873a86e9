"""BlockDrop on CIFAR-10 with a ResNet-32 base (15 blocks): `blockdrop_r110_c10`'s settings on the smaller base.

The original's R32 checkpoints were pretrained to 92.3% (164 epochs); its curriculum and fine-tuning commands are
those of the R110 model (penalty -10 here).
"""

from dslim.config import replace
from dslim.recipes import load


def recipe():  # type: ignore[no-untyped-def]
    return replace(load("blockdrop_r110_c10"), **{"model.arch": "cifar_resnet32", "stages.policy.epochs": 200})
