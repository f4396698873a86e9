"""US-Net's pipeline on the built-in handwritten digits: any width in [0.25, 1.0] of MobileNet v1 at input 32.

Sandwich rule with in-place distillation, BN calibration of the named widths, evaluation; about two minutes on a
2-core CPU. One random width per step instead of the paper's two: on 1,437 small images the in-place targets of
an early largest are poor, and with fewer distilled passes per step the supernet converges in half the epochs.
The original's colour jitter and 8-GPU batching are left out.
"""

from dslim.config import replace
from dslim.recipes import load


def recipe():  # type: ignore[no-untyped-def]
    return replace(
        load("usnet_mbv1"),
        **{
            "model.num_classes": 10,
            "model.input_size": 32,
            "model.widths": (0.25, 0.5, 0.75, 1.0),
            "model.width_range": (0.25, 1.0),
            "data.root": "digits",
            "data.batch_size": 64,
            "data.random_area": (0.5, 1.0),
            "data.flip": False,
            "data.mean": (0.5, 0.5, 0.5),
            "data.std": (0.5, 0.5, 0.5),
            "data.color_jitter": (0.0, 0.0, 0.0, 0.0),
            "stages.supernet.epochs": 8,
            "stages.supernet.global_batch": 0,
            "stages.supernet.num_random": 1,
            "stages.supernet.optim.lr": 0.05,
            "stages.supernet.optim.lr_batch": 64,
            "stages.supernet.schedule.warmup_epochs": 1,
            "stages.bn_recalibration.batches": 20,
        },
    )
