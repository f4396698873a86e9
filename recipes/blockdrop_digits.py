"""BlockDrop's pipeline on the built-in handwritten digits at 32px: a CIFAR ResNet-32 base (15 blocks), a few minutes
on a 2-core CPU.

`blockdrop_r110_c10`'s stages, shortened to about 26 epochs in all, with what that takes on 1,437 training images:
- pretrain, 12 epochs (SGD 0.05, cosine), with stochastic depth (block l of 15 skipped with probability
  0.3 (l + 1) / 15). A normally trained ResNet-32 on the digits loses 2 to 80 points when any one of its blocks is
  dropped, and the original's thousands of fine-tuning epochs, which teach the ResNet to do without the blocks the
  policy drops, do not fit in minutes;
- policy, 10 epochs, two more blocks learnable each epoch (the original: one per epoch over thousands of epochs),
  Adam 3e-3 (the policy's logits must move within 220 steps), entropy weight 0.03, exploration bound alpha 0.9,
  penalty -5;
- finetune, 4 epochs, the original's Adam 1e-4 for the ResNet and 1e-3 for the policy, alpha 0.9, penalty -10.
Adam rates are quoted for the digits' batch of 64, which every stage uses (the original's per-stage batches of 64,
2,048 and 256 are left out). The pretraining keeps a warm-up epoch, plain momentum and no weight decay on
BatchNorm and biases rather than the pk repository's settings: with those, the shortened pipeline test's policy
ends below 50% top-1. Random crops pad by 2 pixels; no flips (a mirrored digit is another shape).
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
            "stages.pretrain.epochs": 12,
            "stages.pretrain.global_batch": 0,
            "stages.pretrain.schedule.per_epoch": False,
            "stages.pretrain.schedule.warmup_epochs": 1,
            "stages.pretrain.schedule.warmup_lr": 0.01,
            "stages.pretrain.optim.nesterov": False,
            "stages.pretrain.optim.decay_norm_and_bias": False,
            "stages.pretrain.drop_rate": 0.3,
            "stages.pretrain.optim.lr": 0.05,
            "stages.pretrain.optim.lr_batch": 64,
            "stages.pretrain.optim.weight_decay": 5e-4,
            "stages.pretrain.schedule.kind": "cosine",
            "stages.pretrain.schedule.milestones": (),
            "stages.policy.epochs": 10,
            "stages.policy.global_batch": 0,
            "stages.policy.curriculum_blocks": 2,
            "stages.policy.optim.lr": 3e-3,
            "stages.policy.optim.lr_batch": 64,
            "stages.policy.entropy_weight": 0.03,
            "stages.policy.alpha": 0.9,
            "stages.policy.penalty": -5.0,
            "stages.finetune.epochs": 4,
            "stages.finetune.global_batch": 0,
            "stages.finetune.alpha": 0.9,
            "stages.finetune.optim.lr_batch": 64,
            "stages.finetune.policy_optim.lr": 1e-3,
            "stages.finetune.policy_optim.lr_batch": 64,
            "stages.finetune.schedule.milestones": (),
            "stages.finetune.policy_schedule.milestones": (),
        },
    )
