"""Sandwich training of a supernet: several subnets per step, one optimizer step (S-Net, US-Net, DS-Net stage I,
AutoSlim's supernet).

Subnets of a step (`SandwichConfig.rule`):
- `sandwich` (US-Net, DS-Net, AutoSlim): the largest, `num_random` random subnets and the smallest. Random subnets
  are drawn by `sampler` (see `dslim.models.sampling`); the draws depend only on (seed, step), so every process makes
  the same ones. With the `groups` sampler the smallest is every group at its smallest bin.
- `all_widths` (S-Net): every named subnet (each distinct one once), largest first.
- `single`: the largest only (training a fixed network).

Targets (`SandwichConfig.distill`): the first subnet learns from the labels (label-smoothed cross-entropy); the
others
- `none`: from the labels too;
- `inplace` (in-place distillation): from the online first subnet's detached softmax, by soft cross-entropy;
  that is KL(teacher || student) at temperature 1 (mmrazor's AutoSlim) plus the teacher's entropy, a constant,
  so the gradients are the same;
- `ieb` (in-place ensemble bootstrapping, DS-Net): from the softmax of the EMA model's largest, run in eval mode;
  with `ensemble_ib` the last (smallest) learns from the mean of the EMA softmaxes of all the other subnets.

Each subnet runs forward and backward in turn, so only one graph is alive at a time; gradients add up and are
all-reduced once, by the last backward (`StepContext.backward_pass`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dslim.config import Fraction, NonNegative, TrainConfig
from dslim.models import sampling
from dslim.models.base import Supernet
from dslim.nn import SlimBatchNorm2d
from dslim.subnet import Subnet
from dslim.training import Batch, Method, ParamSet, StepContext


@dataclass(frozen=True)
class SandwichConfig(TrainConfig):
    """Sandwich-rule training of the whole supernet (see `dslim.methods.sandwich`)."""

    label_smoothing: Fraction = 0.1
    """Label smoothing of the cross-entropy on labels."""
    rule: Literal["sandwich", "all_widths", "single"] = "sandwich"
    """Subnets per step: `sandwich` (largest, smallest, `num_random` random), `all_widths` (S-Net: every named
    subnet, largest first), `single` (the largest only)."""
    num_random: NonNegative = 2
    """Random subnets per sandwich step (n - 2 of the sandwich rule)."""
    sampler: Literal["auto", "named", "width", "groups"] = "auto"
    """How random subnets are drawn: `named` (from `random_subnets`), `width` (a width multiplier in the model's
    range, US-Net), `groups` (every channel group independently, in `model.channel_bins` bins: AutoSlim);
    `auto`: `named` if `random_subnets` is set, else `width` if the model has a width range, else one of the
    named subnets."""
    random_subnets: tuple[str, ...] = ()
    """Names the `named` sampler draws from (DS-Net: uniform-1..12)."""
    distill: Literal["none", "inplace", "ieb"] = "inplace"
    """Targets of the non-largest subnets: labels (`none`), the online largest's detached softmax (`inplace`),
    or the EMA model's largest (`ieb`, in-place ensemble bootstrapping; needs `ema_decay`)."""
    ensemble_ib: bool = False
    """IEB: the smallest's target is the mean of the EMA softmaxes of the largest and the random subnets."""
    eval_subnets: tuple[str, ...] = ()
    """Subnets evaluated after each epoch (empty: smallest and largest)."""


def random_subnet(net: Supernet, cfg: SandwichConfig, rng: np.random.Generator, bins: int, min_bin: int) -> Subnet:
    sampler = cfg.sampler
    if sampler == "auto":
        sampler = "named" if cfg.random_subnets else "width" if getattr(net, "width_range", None) else "any"
    if sampler == "named":
        return sampling.named(net, cfg.random_subnets, rng)
    if sampler == "width":
        return sampling.uniform_width(net, rng)
    if sampler == "groups":
        return sampling.in_bins(net, rng, bins, min_bin) if bins else sampling.per_group(net, rng)
    return sampling.named(net, list(net.named_subnets()), rng)


def step_subnets(
    net: Supernet, cfg: SandwichConfig, rng: np.random.Generator, bins: int = 0, min_bin: int = 1
) -> list[tuple[str, Subnet]]:
    """(log name, subnet) of every pass of a step, the teacher (largest) first."""
    if cfg.rule == "single":
        return [("largest", net.largest())]
    if cfg.rule == "all_widths":  # each distinct subnet once (two names may mean one subnet: a search's targets)
        distinct: dict[Subnet, str] = {}
        for name, subnet in net.named_subnets().items():
            distinct.setdefault(subnet, name)
        return sorted(((n, s) for s, n in distinct.items()), key=lambda item: -sum(item[1].values()))
    randoms = [("random", random_subnet(net, cfg, rng, bins, min_bin)) for _ in range(cfg.num_random)]
    # the sandwich's bread bounds the space the random subnets come from: with per-group bins, every group's
    # smallest bin (a width multiplier's smallest would leave the bins' lower corner untrained)
    smallest = sampling.smallest_of(net.group_choices(bins, min_bin)) if cfg.sampler == "groups" else net.smallest()
    return [("largest", net.largest()), *randoms, ("smallest", smallest)]


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
    cfg: SandwichConfig = ctx.cfg  # type: ignore[assignment]
    ensemble = cfg.ensemble_ib and len(subnets) > 2
    probs = []
    with ctx.accelerator.autocast(), teacher_mode(ctx.ema):
        for _, subnet in subnets[: -1 if ensemble else 1]:
            ctx.ema.set_subnet(subnet)
            probs.append(ctx.ema(images).float().softmax(1))
    targets = [probs[0]] * (len(subnets) - 1)
    if ensemble:
        targets[-1] = torch.stack(probs).mean(0)
    return targets


def sandwich_pass(
    model: nn.Module,
    batch: Batch,
    ctx: StepContext,
    subnets: list[tuple[str, Subnet]],
    label_smoothing: float,
    distill: str = "inplace",
    targets: list[torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Forward and backward each subnet in turn, gradients adding up: the first on the labels, the others on the
    labels (`none`), on the first one's detached softmax (`inplace`) or on `targets` (`ieb`, one per later subnet).
    Returns the summed loss and each name's mean loss, to log."""
    images, labels = batch
    net = ctx.supernet
    teacher: torch.Tensor | None = None
    losses: dict[str, list[torch.Tensor]] = {}
    for i, (name, subnet) in enumerate(subnets):
        with ctx.backward_pass(last=i == len(subnets) - 1):
            net.set_subnet(subnet)
            logits = model(images).float()
            if i == 0 or distill == "none":
                loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
            elif distill == "inplace":
                loss = soft_cross_entropy(logits, teacher)  # type: ignore[arg-type]
            else:
                loss = soft_cross_entropy(logits, targets[i - 1])  # type: ignore[index]
            ctx.backward(loss)
        if i == 0:
            teacher = logits.detach().softmax(1)
        losses.setdefault(name, []).append(loss.detach())
    means = {f"loss/{name}": torch.stack(values).mean() for name, values in losses.items()}
    return {"loss": sum(torch.stack(v).sum() for v in losses.values()), **means}  # type: ignore[dict-item]


class Sandwich(Method):
    """Every parameter of the supernet, one optimizer; the passes of `step_subnets` each step."""

    def __init__(self, cfg: SandwichConfig, bins: int = 0, min_bin: int = 1) -> None:
        self.cfg, self.bins, self.min_bin = cfg, bins, min_bin

    def param_sets(self, net: Supernet) -> dict[str, ParamSet]:
        return {"weights": ParamSet(list(net.parameters()), self.cfg.optim, self.cfg.schedule)}

    def step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        """Forward and backward every subnet of the step on one micro-batch; returns the losses to log."""
        images, labels = batch
        net, cfg = ctx.supernet, self.cfg
        net.train()
        subnets = step_subnets(net, cfg, ctx.rng(), self.bins, self.min_bin)
        targets = ema_targets(ctx, images, subnets) if cfg.distill == "ieb" else None
        return sandwich_pass(model, batch, ctx, subnets, cfg.label_smoothing, cfg.distill, targets)
