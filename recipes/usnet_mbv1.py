"""US-MobileNet v1 (Universally Slimmable Networks, ICCV 2019): any width in [0.25, 1.0].

Sandwich rule (largest, smallest, 2 random widths), in-place distillation, BN calibrated after training.
Original: batch 1024, lr 0.5, linear decay to 0, 250 epochs, SGD Nesterov, weight decay 1e-4 on conv (not
depthwise) and FC weights, label smoothing 0.1 on the largest. Evaluated on the 0.025 grid.
"""

from dslim.config import Config, DataConfig, ModelConfig, OptimConfig, ScheduleConfig
from dslim.methods.sandwich import SandwichConfig
from dslim.stages import stages_config
from dslim.stages.bn_recalibration import BnCalibrationConfig

GRID = tuple(round(0.25 + 0.025 * i, 3) for i in range(31))


def recipe() -> Config:
    return Config(
        model=ModelConfig(arch="mobilenet_v1", widths=GRID, width_range=(0.25, 1.0), bn="calibrated"),
        data=DataConfig(root="/data/imagenet", batch_size=128),
        stages=stages_config(
            supernet=SandwichConfig(
                epochs=250,
                rule="sandwich",
                num_random=2,
                distill="inplace",
                label_smoothing=0.1,
                optim=OptimConfig(lr=0.5, lr_batch=1024, weight_decay=1e-4, decay_depthwise=False),
                schedule=ScheduleConfig(kind="linear", min_lr=0.0),
            ),
            bn_recalibration=BnCalibrationConfig(batches=8),
        ),
        pipeline=("supernet", "bn_recalibration", "evaluate"),
    )
