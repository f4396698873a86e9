"""AutoSlim (Yu & Huang, 2019) on ImageNet: ResNet-50 searched down to 3.0G / 2.0G / 1.0G / 570M MACs.

The supernet is ResNet-50 itself (1.0x): 12 bins per channel group of `int(c * k / 12)` channels (each stage's
residual stream is one group, each block's two inner widths are groups of their own). Supernet and search as in
`autoslim_mbv2`, but with the ResNet recipe of the original AutoSlim: SGD Nesterov lr 0.1 for batch 256 (32 x 8
GPUs), weight decay 1e-4, label smoothing 0.1; retrained 100 epochs with steps x0.1 at epochs 30, 60 and 90.
Published: 24.0 / 24.4 / 26.0 / 27.8 top-1 error at 3.0G / 2.0G / 1.0G / 570M MACs.
"""

from dslim.config import OptimConfig, ScheduleConfig, replace
from dslim.recipes import load


def recipe():  # type: ignore[no-untyped-def]
    optim = OptimConfig(lr=0.1, lr_batch=256, momentum=0.9, nesterov=True, weight_decay=1e-4)
    return replace(
        load("autoslim_mbv2"),
        **{
            "model.arch": "resnet50",
            "model.max_width": 1.0,
            "model.widths": (0.25, 0.5, 0.75, 1.0),
            "data.batch_size": 32,
            "stages.supernet.optim": optim,
            "stages.supernet.eval_subnets": ("0.25", "1.0"),
            "stages.search.targets": (3.0e9, 2.0e9, 1.0e9, 570e6),
            "stages.retrain.epochs": 100,
            "stages.retrain.optim": optim,
            "stages.retrain.schedule": ScheduleConfig(kind="step", milestones=(30, 60, 90), gamma=0.1),
        },
    )
