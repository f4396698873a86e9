"""AutoSlim (Yu & Huang, 2019) on ImageNet: MobileNet v2 x1.5 searched down to 500M / 300M / 200M MACs.

mmrazor 0.x's released run (`configs/pruning/autoslim`, 8 GPUs x 256). Supernet: 12 bins per channel group (every
group from 2/12 to 12/12 of its widest width, multiples of 8), sandwich of the largest, two per-group random
subnets and the smallest, in-place distillation from the largest (KL at temperature 1 in mmrazor: the same
gradients), label smoothing 0.1, calibrated BatchNorm; SGD Nesterov 0.9, lr 0.5 for batch 2048 decaying linearly to
0 per step, weight decay 1e-4 on conv and linear weights only (not depthwise, BatchNorm or biases), 50 epochs,
random-resized crops of 25-100% area and colour jitter 0.4. Search: greedy, on 5,000 held-out training images
(mmrazor searched on the validation set), batch statistics on held-out batches of 1,024. Retrain: the three
subnets jointly from scratch with switchable BatchNorm, on the labels (smoothing 0.1), same optimizer, 300 epochs.
Published: 24.6 / 25.8 / 27.0 top-1 error at 505M / 305M / 207M MACs.
"""

from dslim.config import Config, DataConfig, ModelConfig, OptimConfig, ScheduleConfig
from dslim.methods.sandwich import SandwichConfig
from dslim.stages import stages_config
from dslim.stages.retrain import RetrainConfig
from dslim.stages.search import SearchConfig

# uniform widths on the bins of the 1.5x supernet (k/12 of 1.5), the reference curve of the search
WIDTHS = tuple(k / 8 for k in range(2, 13))
GPUS, PER_GPU = 8, 256


def recipe() -> Config:
    batch = GPUS * PER_GPU
    optim = OptimConfig(lr=0.5, lr_batch=batch, momentum=0.9, nesterov=True, weight_decay=1e-4, decay_depthwise=False)
    linear = ScheduleConfig(kind="linear", min_lr=0.0)
    return Config(
        model=ModelConfig(
            arch="mobilenet_v2", max_width=1.5, widths=WIDTHS, bn="calibrated", channel_bins=12, min_bin=2
        ),  # fmt: skip
        data=DataConfig(
            root="/data/imagenet",
            batch_size=PER_GPU,
            random_area=(0.25, 1.0),
            color_jitter=(0.4, 0.4, 0.4, 0.0),
            holdout=5000,
        ),
        stages=stages_config(
            supernet=SandwichConfig(
                epochs=50,
                global_batch=batch,
                rule="sandwich",
                num_random=2,
                sampler="groups",
                distill="inplace",
                label_smoothing=0.1,
                optim=optim,
                schedule=linear,
                eval_subnets=("0.25", "1.5"),
            ),
            search=SearchConfig(targets=(500e6, 300e6, 200e6), bn="batch", batch_size=1024),
            retrain=RetrainConfig(
                epochs=300, global_batch=batch, optim=optim, schedule=linear, label_smoothing=0.1, distill="none"
            ),
        ),
        pipeline=("supernet", "search", "retrain", "evaluate", "export"),
    )
