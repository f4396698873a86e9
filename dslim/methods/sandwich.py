"""Sandwich training of a supernet: several subnets per step, one optimizer step (S-Net, US-Net, DS-Net stage I).

Subnets of a step (`TrainConfig.rule`):
- `sandwich` (US-Net, DS-Net): the largest, `num_random` random subnets and the smallest. Random subnets are drawn
  from `random_subnets` by name (DS-Net: uniform-1..12), else uniformly in the model's width range (US-Net), else
  among its named subnets; the draws depend only on (seed, step), so every process makes the same ones.
- `all_widths` (S-Net): every named subnet, largest first.
- `single`: the largest only.

Targets (`TrainConfig.distill`): the first subnet learns from the labels (label-smoothed cross-entropy); the others
- `none`: from the labels too;
- `inplace` (in-place distillation): from the online first subnet's detached softmax;
- `ieb` (in-place ensemble bootstrapping, DS-Net): from the softmax of the EMA model's largest, run in eval mode;
  with `ensemble_ib` the last (smallest) learns from the mean of the EMA softmaxes of all the other subnets.

Each subnet runs forward and backward in turn, so only one graph is alive at a time; gradients add up and are
all-reduced once, by the last backward (`StepContext.backward_pass`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dslim.config import TrainConfig
from dslim.models.base import Supernet
from dslim.nn import SlimBatchNorm2d
from dslim.subnet import Subnet
from dslim.trainer import Batch, StepContext


def random_subnet(net: Supernet, cfg: TrainConfig, rng: np.random.Generator) -> Subnet:
    if cfg.random_subnets:
        return net.resolve(cfg.random_subnets[rng.integers(len(cfg.random_subnets))])
    width_range = getattr(net, "width_range", None)
    if width_range is not None:
        return net.uniform(float(rng.uniform(*width_range)))  # type: ignore[attr-defined]
    named = list(net.named_subnets().values())
    return named[rng.integers(len(named))]


def step_subnets(net: Supernet, cfg: TrainConfig, rng: np.random.Generator) -> list[tuple[str, Subnet]]:
    """(log name, subnet) of every pass of a step, the teacher (largest) first."""
    if cfg.rule == "single":
        return [("largest", net.largest())]
    if cfg.rule == "all_widths":
        named = net.named_subnets().items()
        return sorted(named, key=lambda item: -sum(item[1].values()))
    randoms = [("random", random_subnet(net, cfg, rng)) for _ in range(cfg.num_random)]
    return [("largest", net.largest()), *randoms, ("smallest", net.smallest())]


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return -(target * F.log_softmax(logits, dim=1)).sum(1).mean()


@contextlib.contextmanager
def teacher_mode(ema: nn.Module) -> Iterator[None]:
    """Eval mode, except calibrated BatchNorm, which has no statistics during training and uses the batch's."""
    calibrated = [m for m in ema.modules() if isinstance(m, SlimBatchNorm2d) and m.mode == "calibrated"]
    ema.eval()
    for m in calibrated:
        m.train()
    try:
        yield
    finally:
        for m in calibrated:
            m.eval()


@torch.no_grad()
def ema_targets(ctx: StepContext, images: torch.Tensor, subnets: list[tuple[str, Subnet]]) -> list[torch.Tensor]:
    """IEB soft targets of passes 1.. from the EMA model (outside the prepared model, hence its own autocast)."""
    assert ctx.ema is not None, "ieb needs an EMA (ema_decay > 0)"
    ensemble = ctx.cfg.ensemble_ib and len(subnets) > 2
    probs = []
    with ctx.accelerator.autocast(), teacher_mode(ctx.ema):
        for _, subnet in subnets[: -1 if ensemble else 1]:
            ctx.ema.set_subnet(subnet)
            probs.append(ctx.ema(images).float().softmax(1))
    targets = [probs[0]] * (len(subnets) - 1)
    if ensemble:
        targets[-1] = torch.stack(probs).mean(0)
    return targets


def sandwich_step(model: nn.Module, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
    """Forward and backward every subnet of the step on one micro-batch; returns the losses to log."""
    images, labels = batch
    net, cfg = ctx.supernet, ctx.cfg
    subnets = step_subnets(net, cfg, ctx.rng())
    targets = ema_targets(ctx, images, subnets) if cfg.distill == "ieb" else None
    teacher: torch.Tensor | None = None
    losses: dict[str, list[torch.Tensor]] = {}
    for i, (name, subnet) in enumerate(subnets):
        with ctx.backward_pass(last=i == len(subnets) - 1):
            net.set_subnet(subnet)
            logits = model(images).float()
            if i == 0 or cfg.distill == "none":
                loss = F.cross_entropy(logits, labels, label_smoothing=cfg.label_smoothing)
            elif cfg.distill == "inplace":
                loss = soft_cross_entropy(logits, teacher)  # type: ignore[arg-type]
            else:
                loss = soft_cross_entropy(logits, targets[i - 1])  # type: ignore[index]
            ctx.backward(loss)
        if i == 0:
            teacher = logits.detach().softmax(1)
        losses.setdefault(name, []).append(loss.detach())
    means = {f"loss/{name}": torch.stack(values).mean() for name, values in losses.items()}
    return {"loss": sum(torch.stack(v).sum() for v in losses.values()), **means}  # type: ignore[dict-item]
