"""AutoSlim (Yu & Huang, 2019) on ImageNet: ResNet-50 searched down to 3.0G / 2.0G / 1.0G / 570M MACs.

The supernet is ResNet-50 itself (1.0x): 12 bins per channel group of `int(c * k / 12)` channels (each stage's
residual stream is one group, each block's two inner widths are groups of their own). Supernet and search as in
`autoslim_mbv2` (no ResNet supernet config was released) at the ResNet rate of the retraining; the retraining is the
slimmable networks' `apps/autoslim_resnet_train_val.yml`: batch 256 (4 GPUs x 64), SGD Nesterov lr 0.1, weight decay
1e-4, label smoothing 0.1, 100 epochs, x0.1 at epochs 30, 60 and 90, the "mobile" crops.
Published: 24.0 / 24.4 / 26.0 / 27.8 top-1 error at 3.0G / 2.0G / 1.0G / 570M MACs.
"""

from dslim.config import OptimConfig, ScheduleConfig, replace
from dslim.recipes import load


def recipe():  # type: ignore[no-untyped-def]
    optim = OptimConfig(lr=0.1, lr_batch=256, momentum=0.9, nesterov=True, weight_decay=1e-4, decay_depthwise=False)
    return replace(
        load("autoslim_mbv2"),
        **{
            "model.arch": "resnet50",
            "model.max_width": 1.0,
            "model.widths": (0.25, 0.5, 0.75, 1.0),
            "data.batch_size": 64,
            "stages.supernet.global_batch": 256,
            "stages.supernet.optim": optim,
            "stages.supernet.eval_subnets": ("0.25", "1.0"),
            "stages.search.targets": (3.0e9, 2.0e9, 1.0e9, 570e6),
            "stages.retrain.epochs": 100,
            "stages.retrain.global_batch": 256,
            "stages.retrain.optim": optim,
            "stages.retrain.schedule": ScheduleConfig(kind="step", milestones=(30, 60, 90), gamma=0.1, per_epoch=True),
        },
    )
