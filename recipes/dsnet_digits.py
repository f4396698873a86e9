"""DS-Net's pipeline on the built-in handwritten digits: input 32, 10 classes, a few epochs on a CPU.

All of `dsnet_mbv1`'s stages (supernet, BN reset, gate, evaluation, export), shortened. One difference: the
supernet stage distills in place from the online largest rather than by IEB, because within a few epochs the EMA
teacher is still near chance and the small subnets would learn from it (`--stages.supernet.distill ieb` restores
the paper's choice; it needs many more epochs here). The MAdds penalty is scaled to the digits' 32px subnets
(MAdds in units of 1e7 rather than 1e9), so it weighs on the gate as it does at 224px. Left out, as on 1,437 small
grey images over a few epochs they would only slow learning: timm's augmentations (RandAugment, erasing, random
and bicubic resizing), the per-GPU batching of 8 GPUs, per-epoch schedules, and the gate's EMA (0.997 would hardly
move in 66 steps).
"""

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
            "data.interpolation": "bilinear",
            "data.randaugment.layers": 0,
            "data.erasing.prob": 0.0,
            "data.eval_interpolation": "bilinear",
            "data.eval_batch_size": 100,
            "stages.supernet.epochs": 10,
            "stages.supernet.global_batch": 0,
            "stages.supernet.schedule.per_epoch": False,
            "stages.supernet.schedule.warmup_prefix": True,
            "stages.supernet.optim.lr": 0.05,
            "stages.supernet.optim.lr_batch": 64,
            "stages.supernet.schedule.warmup_epochs": 1,
            "stages.supernet.schedule.cooldown_epochs": 0,
            "stages.supernet.distill": "inplace",
            "stages.supernet.ema_decay": 0.0,
            "stages.bn_recalibration.batches": 10,
            "stages.bn_recalibration.batch_size": 0,
            "stages.gate.epochs": 3,
            "stages.gate.global_batch": 0,
            "stages.gate.ema_decay": 0.0,
            "stages.gate.ema_artifact": False,
            "stages.gate.schedule.per_epoch": False,
            "stages.gate.schedule.warmup_prefix": True,
            "stages.gate.optim.lr": 0.1,
            "stages.gate.optim.lr_batch": 64,
            "stages.gate.schedule.cooldown_epochs": 0,
            "stages.gate.macs_unit": 1e7,
        },
    )
