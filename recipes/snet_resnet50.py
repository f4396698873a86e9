"""S-ResNet-50 (Slimmable Networks, ICLR 2019): widths 0.25/0.5/0.75/1.0, switchable BatchNorm.

Original: batch 256, lr 0.1, steps x0.1 at epochs 30/60/90, 100 epochs, SGD Nesterov, weight decay 1e-4.
"""

from dslim.config import Config, DataConfig, ModelConfig, OptimConfig, ScheduleConfig
from dslim.methods.sandwich import SandwichConfig
from dslim.stages import stages_config


def recipe() -> Config:
    return Config(
        model=ModelConfig(arch="resnet50", widths=(0.25, 0.5, 0.75, 1.0), bn="switchable"),
        data=DataConfig(root="/data/imagenet", batch_size=32),
        stages=stages_config(
            supernet=SandwichConfig(
                epochs=100,
                rule="all_widths",
                distill="none",
                label_smoothing=0.0,
                optim=OptimConfig(lr=0.1, lr_batch=256, weight_decay=1e-4),
                schedule=ScheduleConfig(kind="step", milestones=(30, 60, 90), gamma=0.1),
            )
        ),
        pipeline=("supernet", "evaluate"),
    )
