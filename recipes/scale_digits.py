"""Every way dslim's stages synchronize processes, in one small pipeline on the built-in digits: the check of a
multi-GPU or multi-node setup before a long run (docs/scale.md), under a minute on 2 CPU processes.

A ResNet-18 at a quarter of its width (32px, channel groups in 4 bins, BlockDrop's policy network attached, calibrated
BatchNorm) runs
- `supernet`: the sandwich rule with per-group random subnets (gradients reduced by DDP or DeepSpeed);
- `search`: AutoSlim's greedy search on 200 held-out images, candidates spread over the processes, scores summed;
- `dmcp`: DMCP's weights (DDP or DeepSpeed) and Markov channel alphas (reduced by the loop) alternately, every step;
- `bn_recalibration`: BatchNorm statistics of the largest subnet, summed over the processes;
- `policy`: BlockDrop's policy by REINFORCE, masks sampled per image, the ResNet frozen.
Every stage prints a digest of its weights, which dslim checks to be the same on every process.

Settings that make runs with different numbers of processes comparable: every training stage's global batch fixed at 512
images (`global_batch`: two processes read micro-batches of 256, one process accumulates two of them), one epoch per
stage (two optimizer steps), no random crop (DALI draws crops per process, so a one-process run would see other crops),
plain SGD for the policy and DMCP's alphas (Adam turns rounding differences of near-zero gradients into full steps), and
a small learning rate for DMCP's weights (at 0.1 its narrow random subnets grow rounding differences about 200-fold in
one step: one process on 1 thread vs 2 threads differed by 5e-7 after the first step, 1e-4 after the second, and its
alphas by 1e-2). A one-process run of the same command then equals a P-process run stage by stage once it calibrates
BatchNorm on P times the batches (counted per process); tests/test_scale.py checks it for P = 2.
"""

from dslim.config import Config, DataConfig, ModelConfig, OptimConfig
from dslim.methods.blockdrop import PolicyConfig
from dslim.methods.dmcp import DmcpConfig
from dslim.methods.sandwich import SandwichConfig
from dslim.stages import stages_config
from dslim.stages.bn_recalibration import BnCalibrationConfig
from dslim.stages.search import SearchConfig


def recipe() -> Config:
    weights = OptimConfig(lr=0.05, lr_batch=256, momentum=0.9, nesterov=True, weight_decay=4e-5)
    return Config(
        model=ModelConfig(
            arch="resnet18",
            max_width=0.25,
            widths=(0.125, 0.25),
            bn="calibrated",
            num_classes=10,
            input_size=32,
            channel_bins=4,
            block_policy=True,
        ),
        data=DataConfig(
            root="digits",
            batch_size=256,
            holdout=200,
            workers=1,
            random_area=(1.0, 1.0),
            random_aspect_ratio=(1.0, 1.0),
            flip=False,
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
        ),
        stages=stages_config(
            supernet=SandwichConfig(
                sampler="groups", distill="inplace", optim=weights, global_batch=512, eval_subnets=("0.25",)
            ),
            search=SearchConfig(targets=(2.5e6,), batch_size=200),
            dmcp=DmcpConfig(
                target_macs=1.2e6,
                min_width=0.1,
                width_step=0.05,
                warmup=0.0,
                optim=OptimConfig(lr=0.005, lr_batch=256, momentum=0.9, nesterov=True, weight_decay=4e-5),
                global_batch=512,
                arch_optim=OptimConfig(lr=0.05, lr_batch=256, weight_decay=0.0),
            ),
            bn_recalibration=BnCalibrationConfig(batches=2, subnets=("0.25",)),
            policy=PolicyConfig(
                curriculum_blocks=0, optim=OptimConfig(lr=0.05, lr_batch=256, weight_decay=0.0), global_batch=512
            ),
        ),
        pipeline=("supernet", "search", "dmcp", "bn_recalibration", "policy"),
    )
