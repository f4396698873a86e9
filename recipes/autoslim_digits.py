"""AutoSlim's whole pipeline on the built-in handwritten digits: supernet -> search -> retrain -> evaluate ->
export, MobileNet v1 at input 32, a few minutes on 2 CPU cores.

The stages and settings of `autoslim_mbv2`, shortened and scaled: a 1.0x MobileNet v1 (11.6M MACs at 32px) in 12
bins per group; 300 of the 1,437 training images held out for the search; targets 6M / 3M / 1.5M MACs, just below
the uniform widths 0.75 (6.6M), 0.5 (3.0M) and 0.375 (1.8M); the found subnets retrained jointly. The original's
colour jitter and 8-GPU batching are left out.
"""

from dslim.config import replace
from dslim.recipes import load

WIDTHS = tuple(k / 8 for k in range(2, 9))


def recipe():  # type: ignore[no-untyped-def]
    return replace(
        load("autoslim_mbv2"),
        **{
            "model.arch": "mobilenet_v1",
            "model.max_width": 1.0,
            "model.widths": WIDTHS,
            "model.num_classes": 10,
            "model.input_size": 32,
            "data.root": "digits",
            "data.batch_size": 64,
            "data.holdout": 300,
            "data.random_area": (0.5, 1.0),
            "data.flip": False,
            "data.mean": (0.5, 0.5, 0.5),
            "data.std": (0.5, 0.5, 0.5),
            "data.color_jitter": (0.0, 0.0, 0.0, 0.0),
            "stages.supernet.epochs": 10,
            "stages.supernet.global_batch": 0,
            "stages.supernet.optim.lr": 0.05,
            "stages.supernet.optim.lr_batch": 64,
            "stages.supernet.schedule.kind": "cosine",
            "stages.supernet.schedule.warmup_epochs": 1,
            "stages.supernet.eval_subnets": ("0.25", "1.0"),
            "stages.search.targets": (6e6, 3e6, 1.5e6),
            "stages.search.batch_size": 300,
            "stages.retrain.epochs": 10,
            "stages.retrain.global_batch": 0,
            "stages.retrain.optim.lr": 0.05,
            "stages.retrain.optim.lr_batch": 64,
            "stages.retrain.schedule.kind": "cosine",
            "stages.retrain.schedule.warmup_epochs": 1,
            "stages.evaluate.calibrate_batches": 10,
        },
    )
