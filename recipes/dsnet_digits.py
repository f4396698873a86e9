"""DS-Net's pipeline on the built-in handwritten digits: input 32, 10 classes, a few epochs on a CPU."""

from dslim.config import replace
from dslim.recipes import load


def recipe():  # type: ignore[no-untyped-def]
    return replace(
        load("dsnet_mbv1"),
        **{
            "model.num_classes": 10,
            "model.input_size": 32,
            "model.dropout": 0.0,
            "data.root": "digits",
            "data.batch_size": 64,
            "data.random_area": (0.5, 1.0),
            "data.flip": False,
            "data.mean": (0.5, 0.5, 0.5),
            "data.std": (0.5, 0.5, 0.5),
            "stages.supernet.epochs": 6,
            "stages.supernet.optim.lr": 0.1,
            "stages.supernet.optim.lr_batch": 64,
            "stages.supernet.schedule.warmup_epochs": 1,
            "stages.supernet.schedule.cooldown_epochs": 0,
            "stages.supernet.ema_decay": 0.9,
            "stages.bn_recalibration.batches": 5,
        },
    )
