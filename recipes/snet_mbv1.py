"""S-MobileNet v1 (Slimmable Networks, ICLR 2019): widths 0.25/0.5/0.75/1.0, switchable BatchNorm.

The original (JiahuiYu/slimmable_networks `apps/s_mobilenet_v1_train_val.yml`): every width trained on the labels
each step, batch 160 (4 GPUs x 40), SGD Nesterov lr 0.045 x0.98 per epoch for 480 epochs, weight decay 1e-4 on
non-depthwise conv and FC weights; its "mobile" crops (25-100% of the area) with colour jitter 0.4. Its lighting
noise is left out: applied to 0-255 pixels with eigenvalues for 0-1 ones, it changed nothing (docs/recipes.md).
"""

from dslim.config import Config, DataConfig, ModelConfig, OptimConfig, ScheduleConfig
from dslim.methods.sandwich import SandwichConfig
from dslim.stages import stages_config

GPUS, BATCH = 4, 160


def recipe() -> Config:
    return Config(
        model=ModelConfig(arch="mobilenet_v1", widths=(0.25, 0.5, 0.75, 1.0), bn="switchable"),
        data=DataConfig(
            root="/data/imagenet", batch_size=BATCH // GPUS, random_area=(0.25, 1.0), color_jitter=(0.4, 0.4, 0.4, 0.0)
        ),
        stages=stages_config(
            supernet=SandwichConfig(
                epochs=480,
                global_batch=BATCH,
                rule="all_widths",
                distill="none",
                label_smoothing=0.0,
                optim=OptimConfig(lr=0.045, lr_batch=BATCH, weight_decay=1e-4, decay_depthwise=False),
                schedule=ScheduleConfig(kind="exp", gamma=0.98, per_epoch=True),
            )
        ),
        pipeline=("supernet", "evaluate"),
    )
