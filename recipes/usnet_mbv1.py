"""US-MobileNet v1 (Universally Slimmable Networks, ICCV 2019): any width in [0.25, 1.0].

The original (`apps/us_mobilenet_v1_train_val.yml`): per step the largest, the smallest and 2 random widths,
batch 1024 (8 GPUs x 128), SGD Nesterov lr 0.5 decaying linearly to 0 per iteration over 250 epochs, weight decay
1e-4 on non-depthwise conv and FC weights, no label smoothing, the "mobile" crops (25-100%) with colour jitter 0.4;
BatchNorm calibrated after training on 5 batches (cumulative), every width of the 0.025 grid. Distillation is in
place, as the paper and the config mean it (the released code reads another key and never distilled).
"""

from dslim.config import Config, DataConfig, ModelConfig, OptimConfig, ScheduleConfig
from dslim.methods.sandwich import SandwichConfig
from dslim.stages import stages_config
from dslim.stages.bn_recalibration import BnCalibrationConfig

GRID = tuple(round(0.25 + 0.025 * i, 3) for i in range(31))
GPUS, BATCH = 8, 1024


def recipe() -> Config:
    return Config(
        model=ModelConfig(arch="mobilenet_v1", widths=GRID, width_range=(0.25, 1.0), bn="calibrated"),
        data=DataConfig(
            root="/data/imagenet", batch_size=BATCH // GPUS, random_area=(0.25, 1.0), color_jitter=(0.4, 0.4, 0.4, 0.0)
        ),
        stages=stages_config(
            supernet=SandwichConfig(
                epochs=250,
                global_batch=BATCH,
                rule="sandwich",
                num_random=2,
                distill="inplace",
                label_smoothing=0.0,
                optim=OptimConfig(lr=0.5, lr_batch=BATCH, weight_decay=1e-4, decay_depthwise=False),
                schedule=ScheduleConfig(kind="linear", min_lr=0.0),
            ),
            bn_recalibration=BnCalibrationConfig(batches=5),
        ),
        pipeline=("supernet", "bn_recalibration", "evaluate"),
    )
