"""BlockDrop's pipeline on the built-in handwritten digits at 32px: a CIFAR ResNet-32 base (15 blocks), a few minutes
on a 2-core CPU.

`blockdrop_r110_c10`'s stages, shortened: pretrain 8 epochs (SGD, cosine); curriculum 5 epochs freeing 3 blocks per
epoch (the original frees one per epoch over thousands of epochs); joint fine-tuning 3 epochs. Adam rates are quoted
for the digits' batch of 64 (the originals' rates at their batches, not scaled down 32x and 4x). Padding by 2 pixels
for the random crops, no flips (a mirrored digit is another shape).
"""

from dslim.config import replace
from dslim.recipes import load

MEAN_STD = (0.5, 0.5, 0.5)


def recipe():  # type: ignore[no-untyped-def]
    return replace(
        load("blockdrop_r110_c10"),
        **{
            "model.arch": "cifar_resnet32",
            "data.root": "digits",
            "data.format": "folder",
            "data.batch_size": 64,
            "data.eval_batch_size": 100,
            "data.pad": 2,
            "data.flip": False,
            "data.mean": MEAN_STD,
            "data.std": MEAN_STD,
            "stages.pretrain.epochs": 8,
            "stages.pretrain.optim.lr": 0.1,
            "stages.pretrain.optim.lr_batch": 64,
            "stages.pretrain.optim.weight_decay": 5e-4,
            "stages.pretrain.schedule.kind": "cosine",
            "stages.pretrain.schedule.milestones": (),
            "stages.policy.epochs": 5,
            "stages.policy.curriculum_blocks": 3,
            "stages.policy.optim.lr_batch": 64,
            "stages.finetune.epochs": 3,
            "stages.finetune.optim.lr_batch": 64,
            "stages.finetune.policy_optim.lr_batch": 64,
            "stages.finetune.schedule.milestones": (),
            "stages.finetune.policy_schedule.milestones": (),
        },
    )
