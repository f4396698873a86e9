"""DMCP's whole pipeline on the built-in handwritten digits: supernet -> dmcp -> sample -> retrain -> evaluate ->
export, MobileNet v2 (1.0x, 6.1M MACs at 32px) pruned to 3M MACs, a few minutes on 2 CPU cores.

The stages of `dmcp_mbv2`, shortened: a short sandwich pre-training of the supernet (per-group random subnets in 10
bins), then the dmcp stage with chains of [0.1, 1.0, 0.1] (9 bins per group, the last 1x1 conv's too): a quarter of its
epochs weights only, then weights and alphas alternately; direct and expected sampling; the expected subnet retrained
from scratch.

Two settings differ from the original's because this run makes about 130 architecture steps where ImageNet makes 50,000:
the alphas learn with Adam (lr 0.1, whose steps do not depend on the gradient's scale) instead of SGD, and the FLOPs
loss weighs 2 instead of 0.1 (at 0.1 its gradient is some 70 times smaller than the cross-entropy's noise, which
averages out only over many steps). With them the expected MACs reach the target within the first architecture epoch
(docs/dmcp.md has the trajectory).
"""

from dslim.config import Config, DataConfig, ModelConfig, OptimConfig, ScheduleConfig
from dslim.methods.dmcp import DmcpConfig
from dslim.methods.sandwich import SandwichConfig
from dslim.stages import stages_config
from dslim.stages.evaluate import EvalConfig
from dslim.stages.retrain import RetrainConfig


def recipe() -> Config:
    weights = OptimConfig(lr=0.02, lr_batch=64, momentum=0.9, nesterov=True, weight_decay=4e-5)
    retrain = OptimConfig(lr=0.05, lr_batch=64, momentum=0.9, nesterov=True, weight_decay=4e-5)
    schedule = ScheduleConfig(kind="cosine", warmup_epochs=1)
    return Config(
        model=ModelConfig(
            arch="mobilenet_v2",
            max_width=1.0,
            widths=(0.5, 0.75, 1.0),
            bn="calibrated",
            num_classes=10,
            input_size=32,
            channel_bins=10,
            prune_head=True,
        ),
        data=DataConfig(
            root="digits", batch_size=64, random_area=(0.5, 1.0), flip=False, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)
        ),
        stages=stages_config(
            supernet=SandwichConfig(
                epochs=4,
                sampler="groups",
                distill="inplace",
                optim=weights,
                schedule=schedule,
                eval_subnets=("0.5", "1.0"),
            ),
            dmcp=DmcpConfig(
                epochs=8,
                target_macs=3e6,
                min_width=0.1,
                width_step=0.1,
                warmup=0.25,
                flops_weight=2.0,
                label_smoothing=0.1,
                optim=weights,
                schedule=ScheduleConfig(kind="cosine"),
                arch_optim=OptimConfig(name="adam", lr=0.1, lr_batch=64, weight_decay=0.0),
                arch_schedule=ScheduleConfig(kind="cosine", min_lr=0.02),
            ),
            retrain=RetrainConfig(
                epochs=15, subnets=("dmcp-expected",), label_smoothing=0.1, optim=retrain, schedule=schedule
            ),
            evaluate=EvalConfig(calibrate_batches=10),
        ),
        pipeline=("supernet", "dmcp", "sample", "retrain", "evaluate", "export"),
    )
