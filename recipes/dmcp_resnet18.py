"""DMCP on ImageNet: ResNet-18 pruned to 1.04G MACs, then retrained.

The original's settings (Zx55/dmcp `config/res18`): every channel group split by [0.1, 1.0, 0.1] into a kept prefix
and 9 bins (each stage's residual stream one chain, every block conv its own); as `dmcp_mbv2` otherwise, but no
label smoothing in the dmcp stage, weight decay 1e-4 and weight lr 0.5 (no warm-up) cosine to 0.08. Retrain: 100
epochs, label smoothing 0.1, lr warmed up from 0.2 to 0.8 over 1,250 steps, then cosine to 0.
Published: 69.0 top-1 at 1.04G MACs.
"""

from dslim.config import OptimConfig, ScheduleConfig, replace
from dslim.recipes import load


def recipe():  # type: ignore[no-untyped-def]
    weights = OptimConfig(lr=0.5, lr_batch=512, momentum=0.9, nesterov=True, weight_decay=1e-4)
    return replace(
        load("dmcp_mbv2"),
        **{
            "model.arch": "resnet18",
            "model.prune_head": False,  # dmcp_mbv2 prunes its last 1x1 conv; a ResNet has none at a fixed width
            "model.max_width": 1.0,
            "model.widths": (0.25, 0.5, 0.75, 1.0),
            "stages.dmcp.target_macs": 1.04e9,
            "stages.dmcp.label_smoothing": 0.0,
            "stages.dmcp.optim": weights,
            "stages.dmcp.schedule": ScheduleConfig(kind="cosine", min_lr=0.08),
            "stages.retrain.epochs": 100,
            "stages.retrain.optim": replace(weights, lr=0.8),
        },
    )
