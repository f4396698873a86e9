"""DMCP (Guo et al., CVPR 2020) on ImageNet: MobileNet v2 x1.5 pruned to a MACs target, then retrained.

The original's settings (Zx55/dmcp `config/mbv2`): every channel group split by [0.1, 1.5, 0.1] into a kept prefix
and 14 bins, the last 1x1 conv too (a group of its own, `prune_head`: the original's `alpha_last`), calibrated
BatchNorm; 40 epochs, the first 20 of weights only, then weights and alphas alternately
every step; weight updates on the largest, the smallest and two (scheduled) random subnets with in-place
distillation, label smoothing 0.1, SGD Nesterov 0.9, weight decay 4e-5 (not on BatchNorm and biases), lr warmed up
from 0.2 to 0.5 over 1,000 steps then cosine to 0.08; alphas: SGD Nesterov lr 0.5 cosine to 0.1, no weight decay;
FLOPs loss `log_l1` with weight 0.1. Batch 64 per GPU; the learning rates are quoted for 8 GPUs (512 images).
Retrain of the expected-sampled subnet from scratch: 250 epochs, label smoothing 0.1, lr warmed up from 0.2 to 0.8
over 1,250 steps, then cosine to 0. The original's color jitter is not reproduced.

Targets of the paper: 43M, 59M, 87M, 97M, 211M (default), 300M MACs (`--stages.dmcp.target-macs 300e6`).
Published top-1 (retrained): 59.0 / 62.4 / 66.2 / 67.0 / 71.6 / 73.5.
"""

from dslim.config import Config, DataConfig, ModelConfig, OptimConfig, ScheduleConfig
from dslim.methods.dmcp import DmcpConfig
from dslim.stages import stages_config
from dslim.stages.retrain import RetrainConfig

STEPS_PER_EPOCH = 1_281_167 // 512


def recipe() -> Config:
    weights = OptimConfig(lr=0.5, lr_batch=512, momentum=0.9, nesterov=True, weight_decay=4e-5)
    retrain = OptimConfig(lr=0.8, lr_batch=512, momentum=0.9, nesterov=True, weight_decay=4e-5)
    return Config(
        model=ModelConfig(
            arch="mobilenet_v2", max_width=1.5, widths=(0.5, 0.75, 1.0, 1.5), bn="calibrated", prune_head=True
        ),
        data=DataConfig(root="/data/imagenet", batch_size=64),
        stages=stages_config(
            dmcp=DmcpConfig(
                epochs=40,
                target_macs=211e6,
                min_width=0.1,
                width_step=0.1,
                warmup=0.5,
                label_smoothing=0.1,
                optim=weights,
                schedule=ScheduleConfig(
                    kind="cosine", warmup_epochs=1000 / STEPS_PER_EPOCH, warmup_lr=0.2, min_lr=0.08
                ),  # fmt: skip
            ),
            retrain=RetrainConfig(
                epochs=250,
                subnets=("dmcp-expected",),
                label_smoothing=0.1,
                optim=retrain,
                schedule=ScheduleConfig(kind="cosine", warmup_epochs=1250 / STEPS_PER_EPOCH, warmup_lr=0.2),
            ),
        ),
        pipeline=("dmcp", "sample", "retrain", "evaluate", "export"),
    )
