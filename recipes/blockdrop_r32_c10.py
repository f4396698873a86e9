"""BlockDrop on CIFAR-10 with a ResNet-32 base (15 blocks): `blockdrop_r110_c10`'s settings on the smaller base.

The original's ResNet-32 read normalized pixels (mean (125.3, 123.0, 113.9)/255, std (63.0, 62.1, 66.7)/255), and
its base was pretrained for 164 epochs (92.3%). No command or checkpoint of its curriculum and fine-tuning was
released: they follow the CIFAR-10 commands of the README (5,001 curriculum epochs, penalty -10), not the scripts'
argparse defaults (batch 256, 10,001 epochs, penalty -5).
"""

from dslim.config import replace
from dslim.recipes import load

CIFAR_MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
CIFAR_STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)


def recipe():  # type: ignore[no-untyped-def]
    return replace(
        load("blockdrop_r110_c10"),
        **{
            "model.arch": "cifar_resnet32",
            "data.mean": CIFAR_MEAN,
            "data.std": CIFAR_STD,
            "stages.policy.epochs": 5001,
        },
    )
