"""S-Net's pipeline on the built-in handwritten digits: S-MobileNet v1 (widths 0.25/0.5/0.75/1.0) at input 32.

Every width trained on the labels each step (switchable BatchNorm), then evaluated; a few epochs on a CPU. The
original's weight-decay rule is kept; its colour jitter, 4-GPU batching and per-epoch decay are left out.
"""

from dslim.config import replace
from dslim.recipes import load


def recipe():  # type: ignore[no-untyped-def]
    return replace(
        load("snet_mbv1"),
        **{
            "model.num_classes": 10,
            "model.input_size": 32,
            "data.root": "digits",
            "data.batch_size": 64,
            "data.random_area": (0.5, 1.0),
            "data.flip": False,
            "data.mean": (0.5, 0.5, 0.5),
            "data.std": (0.5, 0.5, 0.5),
            "data.color_jitter": (0.0, 0.0, 0.0, 0.0),
            "stages.supernet.epochs": 8,
            "stages.supernet.global_batch": 0,
            "stages.supernet.schedule.per_epoch": False,
            "stages.supernet.optim.lr": 0.05,
            "stages.supernet.optim.lr_batch": 64,
            "stages.supernet.schedule.kind": "cosine",
            "stages.supernet.schedule.warmup_epochs": 1,
        },
    )
