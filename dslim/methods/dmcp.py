"""DMCP: Differentiable Markov Channel Pruning (Guo et al., CVPR 2020).

The channel model (`dslim.methods.dmcp_chains`): every channel group is a Markov chain of bins, each kept with a
learnt probability given the previous one; `E[c]` its expected channels. A layer the original prunes by a chain of
its own is a group of its own: MobileNet v2's last 1x1 conv with `--model.prune-head`.

The architecture forward runs the largest subnet with every bin's channels scaled by their marginal (a soft mask)
where the architecture says the original puts it (`Supernet.soft_mask_sites`: after each BatchNorm of the group;
MobileNet v2 after the ReLU6 inside its blocks). The expected MACs are dslim's one complexity polynomial
(`MacsModel`) at the expected channels, differentiable in the alphas (each depthwise conv counted once: the
original's gradient counts it twice), and the `log_l1` FLOPs loss pulls them into `[0.95 T, T]` for a target `T`.
Expected sampling keeps `round(E[c])` channels per group, off the bins, as the original retrains it.

What the `dmcp` stage hands to the `sample` stage is a `DmcpRecord` (target, expected MACs, the chains and their
alphas), stored as JSON in the metadata of the stage's artifact.

Training (`Dmcp`): a warm-up of the weights alone (the first `warmup` share of the stage), then each step one
weight update and one architecture update, each with its own optimizer and schedule. The weight update trains the
largest, the smallest and `num_random` random subnets, the smallest and the random ones on the original's width
grid (`WidthGrid`): per-group random widths in the warm-up, then "scheduled random": per-group random with
probability `p`, else a sample of the Markov chains, `p` multiplied by `random_decay` at each such draw of every
`decay_every`-th step. The largest learns from the labels, the others by in-place distillation from its detached
softmax. The architecture update is the soft-masked largest on the (label-smoothed) cross-entropy plus
`flops_weight` times the FLOPs loss.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Annotated

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dslim.config import (
    Fraction,
    NonNegative,
    NonNegativeFloat,
    OptimConfig,
    Positive,
    ScheduleConfig,
    TrainConfig,
    in_range,
)
from dslim.errors import UserError
from dslim.methods.dmcp_chains import Chain, MarkovChannels
from dslim.methods.sandwich import sandwich_pass
from dslim.models.base import Supernet
from dslim.models.complexity import MacsModel
from dslim.nn import SlimModule
from dslim.subnet import Subnet, make_divisible
from dslim.training import Batch, Method, ParamSet, StepContext, Update, Where

Width = Annotated[float, in_range(0.0, 4.0, open_low=True)]


@dataclass(frozen=True)
class DmcpConfig(TrainConfig):
    """DMCP: weights, then weights and Markov channel alphas alternately (see `dslim.methods.dmcp`)."""

    target_macs: NonNegativeFloat = 0.0
    """MACs per image the architecture is pulled to (e.g. 211e6); must lie between the smallest and the largest
    subnet of the chains."""
    min_width: Width = 0.1
    """Narrowest width of every chain (its kept prefix) and of the smallest subnet, as a multiplier like
    `--model.max-width`."""
    width_step: Width = 0.1
    """Width of one bin of a chain, and the step of the random subnets' widths, as a multiplier (`[min_width,
    model.max_width, width_step]`)."""
    warmup: Fraction = 0.5
    """Share of the stage that trains the weights alone, before the alphas start learning."""
    flops_weight: NonNegativeFloat = 0.1
    """Weight of the FLOPs loss in the architecture update."""
    label_smoothing: Fraction = 0.0
    """Label smoothing of the cross-entropy of the largest subnet and of the architecture update (MobileNet v2:
    0.1)."""
    num_random: NonNegative = 2
    """Random subnets per weight update, beside the largest and the smallest."""
    random_decay: Fraction = 0.9999
    """Scheduled random: the probability of a per-group random subnet (else a Markov sample) is multiplied by this
    at each random draw of every `decay_every`-th step of the second phase (twice per such step with two random
    subnets, as the original)."""
    decay_every: Positive = 10
    """Steps between two decays of the scheduled-random probability (steps numbered from 1, as the original)."""
    arch_optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=0.5, lr_batch=512, momentum=0.9, nesterov=True, weight_decay=0.0)
    )
    """Optimizer of the alphas (the original: SGD Nesterov 0.9, lr 0.5, no weight decay)."""
    arch_schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(kind="cosine", min_lr=0.1))
    """Schedule of the alphas, over the second phase (the original: cosine from 0.5 to 0.1)."""


@dataclass(frozen=True)
class DmcpRecord:
    """What DMCP's training leaves for sampling: the artifact's `"dmcp"` metadata (an imported checkpoint's too)."""

    target_macs: float
    """The MACs target it trained towards (0: unknown, an imported checkpoint)."""
    expected_macs: float
    """The chains' expected MACs at the end of training."""
    chains: MarkovChannels

    def to_json(self) -> dict:
        return {"target_macs": self.target_macs, "expected_macs": self.expected_macs, "chains": self.chains.to_json()}

    @classmethod
    def from_json(cls, obj: object, net: Supernet, where: str) -> DmcpRecord:
        """A record written by `to_json`, its chains checked against `net`'s groups."""
        if not isinstance(obj, dict):
            raise UserError(f"{where} holds no DMCP record (target, expected MACs, chains)")
        chains = MarkovChannels.from_json(obj.get("chains"), net, where)
        try:
            return cls(float(obj.get("target_macs", 0)), float(obj.get("expected_macs", 0)), chains)
        except (TypeError, ValueError):
            raise UserError(f"{where}: its DMCP target or expected MACs is not a number") from None


@dataclass(frozen=True)
class WidthGrid:
    """The original's widths for the smallest and the random subnets of a weight update: a group of `C` channels at
    the supernet's `max_width` runs `make_divisible(C * w / max_width)` channels (divisor 8, at least 8, at most
    `C`) for a width `w` of `[min_width, max_width, step]`; not the chains' bins (the smallest MobileNet v2 x1.5 stem
    has 8 channels, its chain's prefix 6). A converted model's group takes the nearest count it allows."""

    widths: tuple[float, ...]
    max_width: float

    @classmethod
    def of(cls, min_width: float, max_width: float, step: float) -> WidthGrid:
        n = int((max_width - min_width) / step + 1e-4)
        return cls((*(round(min_width + i * step, 3) for i in range(n)), max_width), max_width)

    def channels(self, chain: Chain, width: float) -> int:
        return chain.nearest(make_divisible(chain.widest * width / self.max_width, 8, 8))

    def smallest(self, chains: list[Chain]) -> Subnet:
        return Subnet.of({c.group: self.channels(c, self.widths[0]) for c in chains})

    def random(self, chains: list[Chain], rng: np.random.Generator) -> Subnet:
        """Every group at a width drawn uniformly from the grid."""
        return Subnet.of({c.group: self.channels(c, self.widths[int(rng.integers(len(self.widths)))]) for c in chains})


@contextlib.contextmanager
def soft_masks(net: Supernet, masks: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Inside the block, each group's mask scales its activations at the sites the architecture declares; a
    converted model's layers mask their own outputs (their channels are layouts over several groups)."""

    def scale(group: str, module: nn.Module, args: tuple, y: torch.Tensor) -> torch.Tensor:
        return y * masks[group][: y.shape[1]].view(1, -1, 1, 1)

    hooks = [m.register_forward_hook(functools.partial(scale, g)) for m, g in net.soft_mask_sites() if g in masks]
    layers = [m for m in net.modules() if isinstance(m, SlimModule)]
    for m in layers:
        m.mask_channels(masks)
    try:
        yield
    finally:
        for h in hooks:
            h.remove()
        for m in layers:
            m.mask_channels(None)


def flops_loss(expected_macs: torch.Tensor, target_macs: float) -> torch.Tensor:
    """The original's `log_l1` loss, in millions of MACs: zero inside `[0.95 T, T)`, else the log of the distance
    (to `T` below the band, to `0.95 T` above it), the distance scaled by 0.1 when it exceeds 200M."""
    e, t = expected_macs / 1e6, target_macs / 1e6
    distance = float(abs(e.detach() - t))
    ratio = 0.1 if distance > 200 else 1.0
    if e < 0.95 * t:
        return torch.log(ratio * (t - e))
    if e < t:
        return e * 0.0
    return torch.log(ratio * (e - 0.95 * t))


# -- training ----------------------------------------------------------------------------------------------------
class Dmcp(Method):
    """Alternating weight and architecture updates of `net` and `chains`.

    The method attaches the chains to the network (`net.dmcp`), so that the alphas are trained, reduced across
    processes and checkpointed with it, until `finish` takes them off again and returns them as a `DmcpRecord`.
    """

    def __init__(
        self, cfg: DmcpConfig, net: Supernet, macs: MacsModel, chains: MarkovChannels, grid: WidthGrid
    ) -> None:
        self.cfg, self.macs, self.chains, self.grid = cfg, macs, chains, grid
        net.dmcp = chains
        self.start_epoch = cfg.warmup * cfg.epochs
        self.largest = net.largest()

    def expected_macs(self) -> float:
        """The chains' expected MACs now."""
        with torch.no_grad():
            return float(self.macs.macs(self.chains.expected_channels()))

    def finish(self, net: Supernet) -> DmcpRecord:
        """The chains taken off `net` (its artifact holds the architecture's own tensors only) as the record the
        sample stage reads."""
        record = DmcpRecord(self.cfg.target_macs, self.expected_macs(), self.chains)
        del net.dmcp
        return record

    def param_sets(self, net: Supernet) -> dict[str, ParamSet]:
        arch = {id(p) for p in self.chains.parameters()}
        weights = [p for p in net.parameters() if id(p) not in arch]
        return {
            "weights": ParamSet(weights, self.cfg.optim, self.cfg.schedule),
            "arch": ParamSet(
                list(self.chains.parameters()),
                self.cfg.arch_optim,
                self.cfg.arch_schedule,
                start_epoch=self.start_epoch,
            ),  # fmt: skip
        }

    def second_phase_start(self, where: Where) -> int:
        """The step the alphas start learning at."""
        return round(self.start_epoch * where.steps_per_epoch)

    def updates(self, where: Where, sets) -> list[Update]:  # type: ignore[no-untyped-def]
        weights = Update(("weights",), self.weight_pass)
        second = where.step >= self.second_phase_start(where)
        return [weights, Update(("arch",), self.arch_pass)] if second else [weights]

    def random_probability(self, where: Where, draw: int) -> float:
        """The original's scheduled-random probability at random subnet `draw` of this step: 1 in the warm-up; in
        the second phase, multiplied by `random_decay` before each draw of a step whose number (counted from 1) is a
        multiple of `decay_every`. The original's second phase starts one step before dslim's (its steps count from
        1 too), so the decays of that step are counted as well."""
        start, every, k = self.second_phase_start(where), self.cfg.decay_every, self.cfg.num_random
        if where.step < start:
            return 1.0
        decay_steps = (where.step + 1) // every - (max(start, 1) - 1) // every
        later_draws = k - 1 - draw if (where.step + 1) % every == 0 else 0
        return self.cfg.random_decay ** (k * decay_steps - later_draws)

    def step_subnets(self, where: Where, rng: np.random.Generator) -> list[tuple[str, Subnet]]:
        """Largest, smallest, then the random ones (scheduled random in the second phase)."""
        chains = self.chains.chains
        randoms = []
        for draw in range(self.cfg.num_random):
            markov = rng.random() >= self.random_probability(where, draw)
            subnet = self.chains.sample(rng) if markov else self.grid.random(chains, rng)
            randoms.append(("markov" if markov else "random", subnet))
        return [("largest", self.largest), ("smallest", self.grid.smallest(chains)), *randoms]

    def weight_pass(self, model: nn.Module, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        ctx.supernet.train()
        subnets = self.step_subnets(ctx.where, ctx.rng())
        return sandwich_pass(model, batch, ctx, subnets, self.cfg.label_smoothing, "inplace")

    def arch_pass(self, model: nn.Module, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        images, labels = batch
        net = ctx.supernet
        net.train()
        net.set_subnet(net.largest())
        with ctx.backward_pass(last=True), soft_masks(net, self.chains.masks()):
            ce = F.cross_entropy(model(images).float(), labels, label_smoothing=self.cfg.label_smoothing)
            expected = self.macs.macs(self.chains.expected_channels())
            floss = flops_loss(expected, self.cfg.target_macs)
            ctx.backward(ce + self.cfg.flops_weight * floss.float())
        return {"loss/arch": ce.detach(), "loss/flops": floss.detach().float(),
                "expected_mmacs": expected.detach().float() / 1e6}  # fmt: skip
