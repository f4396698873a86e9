"""S-MobileNet v1 (Slimmable Networks, ICLR 2019): widths 0.25/0.5/0.75/1.0, switchable BatchNorm.

Original: batch 160, lr 0.045, exponential decay 0.98 per epoch, 480 epochs, SGD Nesterov, weight decay 1e-4.
"""

from dslim.config import Config, DataConfig, ModelConfig, OptimConfig, ScheduleConfig
from dslim.methods.sandwich import SandwichConfig
from dslim.stages import stages_config


def recipe() -> Config:
    return Config(
        model=ModelConfig(arch="mobilenet_v1", widths=(0.25, 0.5, 0.75, 1.0), bn="switchable"),
        data=DataConfig(root="/data/imagenet", batch_size=40),
        stages=stages_config(
            supernet=SandwichConfig(
                epochs=480,
                rule="all_widths",
                distill="none",
                label_smoothing=0.0,
                optim=OptimConfig(lr=0.045, lr_batch=160, weight_decay=1e-4),
                schedule=ScheduleConfig(kind="exp", gamma=0.98),
            )
        ),
        pipeline=("supernet", "evaluate"),
    )
