"""BlockDrop (CVPR 2018) on CIFAR-10 with a ResNet-110 base: pretrain -> policy -> finetune -> evaluate -> export.

Data: the CIFAR-10 files users have (`--data.root .../cifar-10-batches-bin` or `cifar-10-batches-py`), 4-pixel
pad-and-crop and flips, the original's CIFAR normalization (its R32 models'; its R110 models read raw [0, 1] pixels).
Pretrain: the standard CIFAR ResNet schedule (He et al. 2016), SGD lr 0.1 for batch 128, momentum 0.9, weight decay
1e-4, 164 epochs, x0.1 at epochs 82 and 123, one warm-up epoch (ResNet-110 starts at 0.01 in the paper).
Policy (the original's `cl_training.py`): ResNet-8 policy, Adam lr 1e-3 for batch 2048, no weight decay, penalty -1,
entropy weight 0.1, alpha 0.8, one more learnable block per epoch; the original ran 5,000 epochs (its released
checkpoint: epoch 5300), 300 here (54 epochs of curriculum, then all blocks).
Finetune (`finetune.py`): Adam lr 1e-4 for batch 256 for ResNet and policy, penalty -10, 2000 epochs, x0.1 at 1600.
Published (its `test.py`): Accuracy 0.936, Block Usage 16.933 ± 3.717, FLOPs/img 1.81E+08 ± 3.43E+07, 469 unique
policies.
"""

from dslim.config import Config, DataConfig, ModelConfig, OptimConfig, ScheduleConfig
from dslim.methods.blockdrop import FinetuneConfig, PolicyConfig, PretrainConfig
from dslim.stages import stages_config

CIFAR_MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
CIFAR_STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)
PIPELINE = ("pretrain", "policy", "finetune", "evaluate", "export")


def recipe() -> Config:
    adam = OptimConfig(name="adam", lr=1e-4, lr_batch=256, weight_decay=0.0)
    return Config(
        model=ModelConfig(
            arch="cifar_resnet110", num_classes=10, input_size=32, widths=(), bn="private", block_policy=True
        ),  # fmt: skip
        data=DataConfig(
            root="/data/cifar-10-batches-bin",
            format="cifar",
            batch_size=128,
            augment="pad_crop",
            pad=4,
            flip=True,
            crop_fraction=1.0,
            mean=CIFAR_MEAN,
            std=CIFAR_STD,
            eval_batch_size=256,
        ),  # fmt: skip
        stages=stages_config(
            pretrain=PretrainConfig(
                epochs=164,
                optim=OptimConfig(lr=0.1, lr_batch=128, momentum=0.9, nesterov=False, weight_decay=1e-4),
                schedule=ScheduleConfig(
                    kind="step", milestones=(82, 123), gamma=0.1, warmup_epochs=1, warmup_lr=0.01
                ),  # fmt: skip
            ),
            policy=PolicyConfig(
                epochs=300,
                optim=OptimConfig(name="adam", lr=1e-3, lr_batch=2048, weight_decay=0.0),
                schedule=ScheduleConfig(kind="constant"),
                penalty=-1.0,
                alpha=0.8,
                entropy_weight=0.1,
                curriculum_blocks=1,
            ),
            finetune=FinetuneConfig(
                epochs=2000,
                optim=adam,
                schedule=ScheduleConfig(kind="step", milestones=(1600,), gamma=0.1),
                policy_optim=adam,
                policy_schedule=ScheduleConfig(kind="step", milestones=(1600,), gamma=0.1),
                penalty=-10.0,
                alpha=0.8,
            ),
        ),
        pipeline=PIPELINE,
    )
