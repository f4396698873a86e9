"""The shared training machinery: one Accelerate loop that knows no method, and what a method gives it."""

from dslim.training.method import Batch, Method, StepContext, Update, Where
from dslim.training.metrics import MetricsLog
from dslim.training.optim import ParamSet, lr_at, param_groups, peak_lr
from dslim.training.runtime import Stopped, make_accelerator, tune_allocator
from dslim.training.trainer import Trainer, update_ema

__all__ = [
    "Batch",
    "Method",
    "MetricsLog",
    "ParamSet",
    "StepContext",
    "Stopped",
    "Trainer",
    "Update",
    "Where",
    "lr_at",
    "make_accelerator",
    "param_groups",
    "peak_lr",
    "tune_allocator",
    "update_ema",
]
