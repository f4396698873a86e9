"""DS-Net (Dynamic Slimmable Network, CVPR 2021) on ImageNet: the `ds_mobilenet_v1` supernet.

Stage I: sandwich of largest, two uniform-r (r in 1..12) and smallest, in-place ensemble bootstrapping with the
EMA (0.997) largest as teacher; SGD Nesterov lr 0.08 for batch 512 (64 x 8 GPUs), weight decay 1e-4, cosine with
5 warm-up epochs from 1e-5 to min 1e-5, 150 + 10 cool-down epochs. Then BN reset over the 14 uniform subnets.
Stage II: the gate over the 4 slimmest routes (uniform-0..3) with SGS and 0.5 * (GMAdds)^2, lr 0.08 for batch
512, weight decay 0.01, cosine, 30 + 10 cool-down epochs. Then the 14 subnets and the dynamic model are evaluated
and exported. (The original also kept an EMA of the gate; dslim evaluates and exports the online gate.)
"""

from dslim.config import Config, DataConfig, ModelConfig, OptimConfig, ScheduleConfig
from dslim.methods.gate import GateConfig
from dslim.methods.sandwich import SandwichConfig
from dslim.stages import stages_config
from dslim.stages.bn_recalibration import BnCalibrationConfig
from dslim.stages.evaluate import EvalConfig

UNIFORM = tuple(f"uniform-{r}" for r in range(14))


def recipe() -> Config:
    return Config(
        model=ModelConfig(arch="ds_mobilenet_v1", widths=(), bn="private", dropout=0.2),
        data=DataConfig(root="/data/imagenet", batch_size=64, random_area=(0.08, 1.0)),
        stages=stages_config(
            supernet=SandwichConfig(
                epochs=160,
                rule="sandwich",
                num_random=2,
                random_subnets=tuple(f"uniform-{r}" for r in range(1, 13)),
                distill="ieb",
                ema_decay=0.997,
                label_smoothing=0.1,
                optim=OptimConfig(lr=0.08, lr_batch=512, weight_decay=1e-4),
                schedule=ScheduleConfig(
                    kind="cosine", warmup_epochs=5, warmup_lr=1e-5, min_lr=1e-5, cooldown_epochs=10
                ),
                eval_subnets=("smallest", "largest"),
            ),
            bn_recalibration=BnCalibrationConfig(batches=1000, subnets=UNIFORM),
            gate=GateConfig(
                epochs=40,
                label_smoothing=0.1,
                optim=OptimConfig(lr=0.08, lr_batch=512, weight_decay=0.01),
                schedule=ScheduleConfig(kind="cosine", min_lr=1e-5, cooldown_epochs=10),
                sgs_weight=1.0,
                macs_weight=0.5,
            ),
            evaluate=EvalConfig(subnets=("largest", *UNIFORM)),
        ),
        pipeline=("supernet", "bn_recalibration", "gate", "evaluate", "export"),
    )
