"""BlockDrop (CVPR 2018) on CIFAR-10 with a ResNet-110 base: pretrain -> policy -> finetune -> evaluate -> export.

Data: the CIFAR-10 files users have (`--data.root .../cifar-10-batches-bin` or `cifar-10-batches-py`), 4-pixel
pad-and-crop and flips, raw [0, 1] pixels: the original's ResNet-110 read them unnormalized (its ResNet-32 did not).
Pretrain: the repository BlockDrop's README names for its base ResNets (felixgwu/img_classification_pk_pytorch):
SGD Nesterov lr 0.1 for batch 64, momentum 0.9, weight decay 1e-4 on every parameter, 164 epochs, x0.1 from epochs 82
and 123. Policy (the original's `cl_training.py` and README command): ResNet-8 policy, Adam lr 1e-3 at batch 2048,
no weight decay, penalty -1, entropy weight 0.1, alpha 0.8, one more learnable block per epoch, 5,301 epochs (the
released fine-tuning started from the curriculum's epoch 5,300). Finetune (`finetune.py` and its README command):
Adam lr 1e-4 at batch 256 for ResNet and policy, penalty -10, 2,001 epochs, x0.1 at epoch 1,600.
Published (its `test.py`): Accuracy 0.936, Block Usage 16.933 ± 3.717, FLOPs/img 1.81E+08 ± 3.43E+07, 469 unique
policies.
"""

from dslim.config import Config, DataConfig, ModelConfig, OptimConfig, ScheduleConfig
from dslim.methods.blockdrop import FinetuneConfig, PolicyConfig, PretrainConfig
from dslim.stages import stages_config

PIPELINE = ("pretrain", "policy", "finetune", "evaluate", "export")
RAW = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
"""Pixels in [0, 1] as they are."""


def recipe() -> Config:
    adam = OptimConfig(name="adam", lr=1e-4, lr_batch=256, weight_decay=0.0)
    per_1600 = ScheduleConfig(kind="step", milestones=(1600,), gamma=0.1, per_epoch=True)
    return Config(
        model=ModelConfig(
            arch="cifar_resnet110", num_classes=10, input_size=32, widths=(), bn="private", block_policy=True
        ),  # fmt: skip
        data=DataConfig(
            root="/data/cifar-10-batches-bin",
            format="cifar",
            batch_size=2048,
            augment="pad_crop",
            pad=4,
            flip=True,
            crop_fraction=1.0,
            mean=RAW[0],
            std=RAW[1],
            eval_batch_size=256,
        ),  # fmt: skip
        stages=stages_config(
            pretrain=PretrainConfig(
                epochs=164,
                global_batch=64,
                optim=OptimConfig(
                    lr=0.1, lr_batch=64, momentum=0.9, nesterov=True, weight_decay=1e-4, decay_norm_and_bias=True
                ),  # fmt: skip
                # epochs are 1-based there: the rate drops from the 82nd and the 123rd
                schedule=ScheduleConfig(kind="step", milestones=(81, 122), gamma=0.1, per_epoch=True),
            ),
            policy=PolicyConfig(
                epochs=5300 + 1,
                global_batch=2048,
                optim=OptimConfig(name="adam", lr=1e-3, lr_batch=2048, weight_decay=0.0),
                schedule=ScheduleConfig(kind="constant"),
                penalty=-1.0,
                alpha=0.8,
                entropy_weight=0.1,
                curriculum_blocks=1,
            ),
            finetune=FinetuneConfig(
                epochs=2000 + 1,
                global_batch=256,
                optim=adam,
                schedule=per_1600,
                policy_optim=adam,
                policy_schedule=per_1600,
                penalty=-10.0,
                alpha=0.8,
            ),
        ),
        pipeline=PIPELINE,
    )
