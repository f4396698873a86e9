"""S-ResNet-50 (Slimmable Networks, ICLR 2019): widths 0.25/0.5/0.75/1.0, switchable BatchNorm.

The original (`apps/s_resnet50_train_val.yml`, its basic settings): batch 256 (4 GPUs x 64), SGD Nesterov lr 0.1,
x0.1 at epochs 30, 60 and 90, 100 epochs; the "basic" crops (8-100% of the area) with colour jitter 0.4.
"""

from dslim.config import replace
from dslim.recipes import load


def recipe():  # type: ignore[no-untyped-def]
    return replace(
        load("snet_mbv1"),
        **{
            "model.arch": "resnet50",
            "data.batch_size": 64,
            "data.random_area": (0.08, 1.0),
            "stages.supernet.epochs": 100,
            "stages.supernet.global_batch": 256,
            "stages.supernet.optim.lr": 0.1,
            "stages.supernet.optim.lr_batch": 256,
            "stages.supernet.schedule.kind": "step",
            "stages.supernet.schedule.milestones": (30, 60, 90),
            "stages.supernet.schedule.gamma": 0.1,
        },
    )
