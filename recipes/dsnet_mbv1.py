"""DS-Net (Dynamic Slimmable Network, CVPR 2021) on ImageNet: the `ds_mobilenet_v1` supernet.

The original's three runs (changlin31/DS-Net configs, 8 GPUs x 64; docs/recipes.md maps every setting):
- Stage I: sandwich of largest, two uniform-r (r in 1..13) and smallest, in-place ensemble bootstrapping with the
  EMA (0.997) largest as teacher; SGD Nesterov lr 0.08 for batch 512, weight decay 1e-4 not on 1-D parameters;
  timm's per-epoch cosine over 150 epochs with 5 warm-up epochs from 1e-5, min 1e-5, then 10 cool-down epochs;
  timm's augmentation: random-resized crops with a random interpolation, RandAugment m9 mstd0.5, random erasing 0.2
  (pixel noise); evaluation resized bicubically.
- BN reset over the 14 uniform subnets: 1,001 batches of 256 per process (a cumulative average, where the original
  used PyTorch's momentum 0.1).
- Stage II: the gate over the 4 slimmest routes with SGS and 0.5 * (GMAdds)^2, both losses label-smoothed, lr 0.08
  for batch 512, weight decay 0.01, cosine over 30 epochs + 10 cool-down; its EMA (0.997) is the result, as the
  original reported it.
"""

from dslim.config import Config, DataConfig, ErasingConfig, ModelConfig, OptimConfig, RandAugmentConfig, ScheduleConfig
from dslim.methods.gate import GateConfig
from dslim.methods.sandwich import SandwichConfig
from dslim.stages import stages_config
from dslim.stages.bn_recalibration import BnCalibrationConfig
from dslim.stages.evaluate import EvalConfig

UNIFORM = tuple(f"uniform-{r}" for r in range(14))
GPUS, PER_GPU = 8, 64


def recipe() -> Config:
    timm_cosine = {"kind": "cosine", "min_lr": 1e-5, "cooldown_epochs": 10, "per_epoch": True, "warmup_prefix": False}
    return Config(
        model=ModelConfig(arch="ds_mobilenet_v1", widths=(), bn="private", dropout=0.2),
        data=DataConfig(
            root="/data/imagenet",
            batch_size=PER_GPU,
            random_area=(0.08, 1.0),
            interpolation="random",
            randaugment=RandAugmentConfig(layers=2, magnitude=9.0, magnitude_std=0.5),
            erasing=ErasingConfig(prob=0.2, mode="pixel"),
            eval_interpolation="bicubic",
            eval_batch_size=4 * PER_GPU,
        ),
        stages=stages_config(
            supernet=SandwichConfig(
                epochs=150 + 10,
                global_batch=GPUS * PER_GPU,
                rule="sandwich",
                num_random=2,
                random_subnets=tuple(f"uniform-{r}" for r in range(1, 14)),
                distill="ieb",
                ema_decay=0.997,
                label_smoothing=0.1,
                optim=OptimConfig(lr=0.08, lr_batch=GPUS * PER_GPU, weight_decay=1e-4),
                schedule=ScheduleConfig(warmup_epochs=5, warmup_lr=1e-5, **timm_cosine),
                eval_subnets=("smallest", "largest"),
            ),
            bn_recalibration=BnCalibrationConfig(batches=1001, batch_size=4 * PER_GPU, subnets=UNIFORM),
            gate=GateConfig(
                epochs=30 + 10,
                global_batch=GPUS * PER_GPU,
                ema_decay=0.997,
                ema_artifact=True,
                label_smoothing=0.1,
                sgs_label_smoothing=0.1,
                optim=OptimConfig(lr=0.08, lr_batch=GPUS * PER_GPU, weight_decay=0.01),
                schedule=ScheduleConfig(**timm_cosine),
                sgs_weight=1.0,
                macs_weight=0.5,
            ),
            evaluate=EvalConfig(subnets=("largest", *UNIFORM)),
        ),
        pipeline=("supernet", "bn_recalibration", "gate", "evaluate", "export"),
    )
