"""Optimizers with the originals' weight-decay rules, learning-rate schedules as pure functions of the step, and
the split of a global batch into per-process micro-batches (the learning rate is quoted for a global batch)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from dslim.config import OptimConfig, ScheduleConfig
from dslim.errors import UserError


@dataclass
class ParamSet:
    """Parameters trained by one optimizer with one schedule (a method's `weights`, DMCP's `arch`...).

    `start_epoch`: the schedule runs from this epoch to the end of the stage (DMCP's architecture parameters learn
    only in the second half); before it the set is not stepped.
    """

    params: Sequence[nn.Parameter]
    optim: OptimConfig
    schedule: ScheduleConfig
    start_epoch: float = 0.0


def is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels


def param_groups(model: nn.Module, params: Sequence[nn.Parameter], optim: OptimConfig) -> list[dict]:
    """`params` in two groups, decayed and not: 1-D parameters (BN affine, biases) and, optionally, depthwise conv
    weights are not decayed, as in the originals."""
    wanted = {id(p) for p in params}
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if id(p) not in wanted or id(p) in seen:
                continue
            seen.add(id(p))
            exempt = (p.ndim <= 1 and not optim.decay_norm_and_bias) or (
                is_depthwise(module) and p is module.weight and not optim.decay_depthwise
            )
            (no_decay if exempt else decay).append(p)
    return [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, params: Sequence[nn.Parameter], optim: OptimConfig, lr: float):  # type: ignore[no-untyped-def]
    groups = [g for g in param_groups(model, params, optim) if g["params"]]
    if optim.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=optim.momentum, nesterov=optim.nesterov and optim.momentum > 0)
    if optim.name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=optim.betas)
    return torch.optim.AdamW(groups, lr=lr, betas=optim.betas)


def peak_lr(optim: OptimConfig, global_batch: int) -> float:
    """`optim.lr` is quoted for `optim.lr_batch` images per step; scale it linearly to the actual global batch."""
    return optim.lr * global_batch / optim.lr_batch


def lr_at(step: int, steps_per_epoch: int, epochs: float, peak: float, s: ScheduleConfig) -> float:
    """Learning rate of optimizer step `step` (0-based) of a schedule `epochs` long.

    Warm-up rises linearly from `warmup_lr` to `peak`; the decay then runs to the start of the cool-down (the last
    `cooldown_epochs`), which stays at `min_lr`. The decay starts at the end of warm-up (`warmup_prefix`) or at
    epoch 0, warm-up overriding its start. `step` and `exp` decay per whole epoch; with `per_epoch` everything does.
    """
    e = step / steps_per_epoch
    if s.per_epoch:
        e = math.floor(e + 1e-9)
    if e < s.warmup_epochs:
        return s.warmup_lr + (peak - s.warmup_lr) * e / s.warmup_epochs
    decay_end = epochs - s.cooldown_epochs
    if s.cooldown_epochs and e >= decay_end:
        return s.min_lr
    start = s.warmup_epochs if s.warmup_prefix else 0.0
    t = min(1.0, (e - start) / max(decay_end - start, 1e-12))
    if s.kind == "cosine":
        return s.min_lr + (peak - s.min_lr) * 0.5 * (1 + math.cos(math.pi * t))
    if s.kind == "linear":
        return s.min_lr + (peak - s.min_lr) * (1 - t)
    if s.kind == "step":
        return peak * s.gamma ** sum(math.floor(e) >= m for m in s.milestones)
    if s.kind == "exp":
        return peak * s.gamma ** math.floor(e)
    return peak


def split_batch(global_batch: int, processes: int, most: int, option: str) -> tuple[int, int]:
    """`(micro-batch, accumulation)`: each of `processes` reads micro-batches of at most `most` images and
    accumulates them so that one optimizer step sees exactly `global_batch` images; the fewest micro-batches that
    divide it evenly. `option` names the setting in the error when none does."""
    if global_batch < processes:
        raise UserError(f"{option} {global_batch} is smaller than the {processes} processes: one image each at least")
    for accum in range(math.ceil(global_batch / (processes * most)), global_batch // processes + 1):
        if global_batch % (processes * accum) == 0:
            return global_batch // (processes * accum), accum
    raise UserError(f"{option} {global_batch} cannot be split evenly into {processes} processes x micro-batches of at "
                    f"most --data.batch-size {most}; choose a multiple of {processes}")  # fmt: skip
