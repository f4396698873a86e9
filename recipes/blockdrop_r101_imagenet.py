"""BlockDrop on ImageNet with a ResNet-101 base (33 bottleneck blocks; torchvision's layout).

Data as the original: the shorter side resized to 256, a random 224 crop and flips (a center crop to evaluate).
Pretrain: not part of the original, which started from a pretrained ResNet-101: torchvision's recipe, SGD lr 0.1
for batch 256, weight decay 1e-4, 90 epochs, x0.1 every 30 (or skip it: `--stages policy finetune evaluate export
--from` a trained base). Policy: a ResNet-10 on the image average-pooled to 112x112 (the original initialised it
from torchvision's ResNet-18; dslim trains it from scratch), Adam lr 1e-3 at batch 2048, penalty -1, 5 epochs (the
released fine-tuning started from the curriculum's epoch 4: the last 5 blocks learnable; the README's command runs
46). Finetune: Adam lr 1e-4 at batch 320, penalty -5, 11 epochs. Published: Accuracy 0.764, Block Usage 24.770 ±
0.980, FLOPs/img 1.25E+10 ± 4.28E+08, 10 unique policies.
"""

from dslim.config import Config, DataConfig, ModelConfig, OptimConfig, ScheduleConfig
from dslim.methods.blockdrop import FinetuneConfig, PolicyConfig, PretrainConfig
from dslim.stages import stages_config


def recipe() -> Config:
    adam = OptimConfig(name="adam", lr=1e-4, lr_batch=320, weight_decay=0.0)
    return Config(
        model=ModelConfig(
            arch="resnet101", num_classes=1000, input_size=224, widths=(1.0,), bn="private", block_policy=True
        ),  # fmt: skip
        data=DataConfig(root="/data/imagenet", batch_size=64, augment="resize_crop", pad=0, crop_fraction=224 / 256),
        stages=stages_config(
            pretrain=PretrainConfig(
                epochs=90,
                global_batch=256,
                optim=OptimConfig(lr=0.1, lr_batch=256, momentum=0.9, nesterov=False, weight_decay=1e-4),
                schedule=ScheduleConfig(kind="step", milestones=(30, 60), gamma=0.1, per_epoch=True),
            ),
            policy=PolicyConfig(
                epochs=4 + 1,
                global_batch=2048,
                optim=OptimConfig(name="adam", lr=1e-3, lr_batch=2048, weight_decay=0.0),
                schedule=ScheduleConfig(kind="constant"),
                penalty=-1.0,
                curriculum_blocks=1,
            ),
            finetune=FinetuneConfig(
                epochs=10 + 1,
                global_batch=320,
                optim=adam,
                policy_optim=adam,
                schedule=ScheduleConfig(kind="constant"),
                policy_schedule=ScheduleConfig(kind="constant"),
                penalty=-5.0,
            ),
        ),
        pipeline=("pretrain", "policy", "finetune", "evaluate", "export"),
    )
