"""BlockDrop (Wu, Nagarajan et al., CVPR 2018): a policy network decides per image which residual blocks of a
pretrained ResNet run (the network: `dslim.models.policy`). What its training stages compute:

Pretraining (`Pretrain`, stage `pretrain`): the base ResNet trained on the labels, normally (the original started
from pretrained ResNets) or with stochastic depth (Huang et al. 2016: each image skips block l of K with probability
`drop_rate (l + 1) / K`), which leaves a base whose blocks can be dropped at less cost.

Policy learning (`PolicyLearning`, stage `policy`): the ResNet is frozen in eval mode and only the policy learns,
by REINFORCE with a self-critical baseline:
- keep probabilities `p = policy(image)` are bounded for exploration, `p' = alpha p + (1 - alpha) (1 - p)`;
- a keep mask `u ~ Bernoulli(p')` is sampled; the greedy mask `g = [p >= 0.5]` (what inference runs) is the
  baseline;
- the reward of a mask is `1 - (blocks kept / K)^2` if the ResNet run with it classifies the image right, else
  `penalty`;
- loss per image `-(R(u) - R(g)) sum_k log P(u_k) - beta sum_k H(p'_k)` (H: Bernoulli entropy), batch mean.
Curriculum: in epoch e the first `K - c (e + 1)` blocks (c = `curriculum_blocks`; the original's c is 1) are kept
in both masks and left out of the loss, so learning starts with the last block and reaches c more blocks each epoch.

Joint fine-tuning (`JointFinetune`, stage `finetune`): the ResNet (train mode) and the policy learn together, each
with its own optimizer: the policy by the same policy gradient (no curriculum, no entropy term), the ResNet by the
cross-entropy of its run with the sampled mask. BatchNorm's running statistics follow the greedy runs only (what
inference runs); the sampled run normalizes by its batch's statistics without recording them.

Where dslim departs from the original:
- A masked-out block runs on no image of the batch (the original computed every block for every image and blended
  the outputs), so a block's BatchNorm statistics in training come from the images that run it, as at inference.
- The entropy bonus is the Bernoulli entropy of each learnable block, `-(p' log p' + (1 - p') log(1 - p'))`; the
  original's `-p' log p'` omitted the second term and also counted the blocks the curriculum holds on.
- In fine-tuning the original recorded BatchNorm statistics from both runs, so its statistics mixed in the sampled
  masks' exploration (a block dropped with probability at least 1 - alpha), which inference never runs.
- Fine-tuning averages the policy gradient over the batch (the original summed it): with Adam, whose steps do not
  depend on the gradient's scale, and the policy on an optimizer of its own, the updates are the same.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from dslim.config import (
    FINITE,
    Fraction,
    NonNegative,
    NonNegativeFloat,
    OptimConfig,
    ScheduleConfig,
    TrainConfig,
    in_range,
)
from dslim.models.base import Supernet
from dslim.nn import SlimBatchNorm2d
from dslim.training import Batch, Method, ParamSet, StepContext

Penalty = Annotated[float, in_range(-1e6, 0.0), FINITE]


@dataclass(frozen=True)
class PretrainConfig(TrainConfig):
    """The base ResNet trained on the labels (BlockDrop starts from a pretrained ResNet)."""

    label_smoothing: Fraction = 0.0
    """Label smoothing of the cross-entropy."""
    drop_rate: Fraction = 0.0
    """Stochastic depth: each image skips block l of K with probability `drop_rate * (l + 1) / K` (0: normal
    training)."""


@dataclass(frozen=True)
class PolicyConfig(TrainConfig):
    """BlockDrop's curriculum learning of the policy; the ResNet is frozen (see `dslim.methods.blockdrop`)."""

    optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="adam", lr=1e-3, lr_batch=2048,
                                                                   weight_decay=0.0))  # fmt: skip
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(kind="constant"))
    penalty: Penalty = -1.0
    """Reward of a wrong prediction (a correct one earns `1 - (blocks kept / K)^2`)."""
    alpha: Annotated[float, in_range(0.5, 1.0)] = 0.8
    """Exploration bound: masks are sampled from `alpha p + (1 - alpha)(1 - p)`."""
    entropy_weight: NonNegativeFloat = 0.1
    """Weight of the entropy bonus of the learnable blocks' keep distributions."""
    curriculum_blocks: NonNegative = 1
    """Blocks that become learnable each epoch, the last ones first (0: all learnable from the start)."""


@dataclass(frozen=True)
class FinetuneConfig(TrainConfig):
    """BlockDrop's joint fine-tuning of ResNet (`optim`, `schedule`) and policy (`policy_optim`, `policy_schedule`)."""

    optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="adam", lr=1e-4, lr_batch=256,
                                                                   weight_decay=0.0))  # fmt: skip
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(kind="constant"))
    policy_optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="adam", lr=1e-4, lr_batch=256,
                                                                          weight_decay=0.0))  # fmt: skip
    """Optimizer of the policy network."""
    policy_schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(kind="constant"))
    """Learning-rate schedule of the policy network."""
    penalty: Penalty = -5.0
    """Reward of a wrong prediction: more negative keeps more blocks (original: -10 for CIFAR, -5 for ImageNet)."""
    alpha: Annotated[float, in_range(0.5, 1.0)] = 0.8
    """Exploration bound: masks are sampled from `alpha p + (1 - alpha)(1 - p)`."""


# -- the pieces of a step -----------------------------------------------------------------------------------------
def held_on(epoch: int, blocks: int, per_epoch: int) -> int:
    """How many leading blocks the curriculum keeps on (and out of the loss) in `epoch` (0-based)."""
    return max(0, blocks - per_epoch * (epoch + 1)) if per_epoch else 0


def explore(probs: torch.Tensor, alpha: float) -> torch.Tensor:
    """Keep probabilities bounded away from 0 and 1: `alpha p + (1 - alpha)(1 - p)`."""
    return alpha * probs + (1 - alpha) * (1 - probs)


@torch.no_grad()
def masks(probs: torch.Tensor, alpha: float, held: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`(sampled, greedy)` keep masks (`[N, K]` bool), the first `held` blocks kept in both."""
    sampled = torch.bernoulli(explore(probs, alpha)).bool()
    greedy = probs >= 0.5
    sampled[:, :held] = True
    greedy[:, :held] = True
    return sampled, greedy


def reward(logits: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor, penalty: float):  # type: ignore[no-untyped-def]
    """`(reward, correct)` per image: `1 - (blocks kept / K)^2` if right, else `penalty`."""
    correct = logits.argmax(1) == labels
    used = keep.float().mean(1)
    return torch.where(correct, 1 - used**2, torch.full_like(used, penalty)), correct


def reinforce_loss(
    probs: torch.Tensor, sampled: torch.Tensor, advantage: torch.Tensor, alpha: float, held: int, entropy_weight: float
) -> torch.Tensor:
    """REINFORCE on the learnable blocks (all but the first `held`) with an entropy bonus, mean over images."""
    p = explore(probs[:, held:], alpha).clamp(1e-6, 1 - 1e-6)
    log_prob = torch.where(sampled[:, held:], p.log(), (1 - p).log()).sum(1)
    entropy = -(p * p.log() + (1 - p) * (1 - p).log()).sum(1)
    return (-advantage * log_prob - entropy_weight * entropy).mean()


@contextlib.contextmanager
def batch_statistics_only(net: nn.Module) -> Iterator[None]:
    """Training-mode BatchNorm normalizes by the batch's statistics and records none of them inside the block."""
    bns = [m for m in net.modules() if isinstance(m, SlimBatchNorm2d)]
    tracked = [bn.track for bn in bns]
    for bn in bns:
        bn.track = False
    try:
        yield
    finally:
        for bn, track in zip(bns, tracked):
            bn.track = track


def _stats(loss: torch.Tensor, r: torch.Tensor, sampled: torch.Tensor, correct: torch.Tensor) -> dict:
    return {"loss": loss.detach(), "reward": r.mean(), "blocks": sampled.float().sum(1).mean(),
            "accuracy": correct.float().mean()}  # fmt: skip


# -- the methods --------------------------------------------------------------------------------------------------
class Pretrain(Method):
    """Every parameter of the ResNet (its policy gets no gradient), one optimizer, cross-entropy."""

    def __init__(self, cfg: PretrainConfig) -> None:
        self.cfg = cfg

    def param_sets(self, net: Supernet) -> dict[str, ParamSet]:
        weights = [p for name, p in net.named_parameters() if not name.startswith("policy.")]
        return {"weights": ParamSet(weights, self.cfg.optim, self.cfg.schedule)}

    def step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        images, labels = batch
        net, cfg = ctx.supernet, self.cfg
        net.train()
        keep = None
        if cfg.drop_rate > 0:
            k = len(net.blocks)
            survive = 1 - cfg.drop_rate * torch.arange(1, k + 1, device=images.device) / k
            keep = torch.rand(len(images), k, device=images.device) < survive
        with ctx.backward_pass(last=True):
            loss = F.cross_entropy(model(images, keep=keep).float(), labels, label_smoothing=cfg.label_smoothing)
            ctx.backward(loss)
        return {"loss": loss.detach()}


class PolicyLearning(Method):
    """The policy alone, one optimizer; the ResNet frozen in eval mode (its parameters must not require grad)."""

    def __init__(self, cfg: PolicyConfig) -> None:
        self.cfg = cfg

    def param_sets(self, net: Supernet) -> dict[str, ParamSet]:
        return {"policy": ParamSet(list(net.policy.parameters()), self.cfg.optim, self.cfg.schedule)}  # type: ignore[union-attr]

    def step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        images, labels = batch
        cfg, net = self.cfg, ctx.supernet
        net.eval()
        net.policy.train()  # type: ignore[union-attr]
        held = held_on(ctx.where.epoch, len(net.blocks), cfg.curriculum_blocks)
        with ctx.backward_pass(last=True):
            probs = model(images, policy=True).float()
            sampled, greedy = masks(probs, cfg.alpha, held)
            with torch.no_grad(), ctx.accelerator.autocast():
                r, correct = reward(net(images, keep=sampled), labels, sampled, cfg.penalty)
                baseline, _ = reward(net(images, keep=greedy), labels, greedy, cfg.penalty)
            loss = reinforce_loss(probs, sampled, r - baseline, cfg.alpha, held, cfg.entropy_weight)
            ctx.backward(loss)
        return {**_stats(loss, r, sampled, correct), "held": torch.tensor(float(held))}


class JointFinetune(Method):
    """ResNet (`weights`, the main set) and policy (`policy`, its own optimizer), one update of both per step."""

    def __init__(self, cfg: FinetuneConfig) -> None:
        self.cfg = cfg

    def param_sets(self, net: Supernet) -> dict[str, ParamSet]:
        cfg = self.cfg
        weights = [p for name, p in net.named_parameters() if not name.startswith("policy.")]
        return {
            "weights": ParamSet(weights, cfg.optim, cfg.schedule),
            "policy": ParamSet(list(net.policy.parameters()), cfg.policy_optim, cfg.policy_schedule),  # type: ignore[union-attr]
        }

    def step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        images, labels = batch
        cfg, net = self.cfg, ctx.supernet
        net.train()
        with ctx.accelerator.autocast():
            probs = net.policy(images).float()  # type: ignore[misc]  # not the main set: outside DDP / DeepSpeed
        sampled, greedy = masks(probs, cfg.alpha, 0)
        with torch.no_grad(), ctx.accelerator.autocast():
            baseline, _ = reward(net(images, keep=greedy), labels, greedy, cfg.penalty)
        with ctx.backward_pass(last=True), batch_statistics_only(net):
            logits = model(images, keep=sampled).float()
            ce = F.cross_entropy(logits, labels)
            r, correct = reward(logits.detach(), labels, sampled, cfg.penalty)
            pg = reinforce_loss(probs, sampled, r - baseline, cfg.alpha, 0, 0.0)
            loss = ce + pg
            ctx.backward(loss)
        return {**_stats(loss, r, sampled, correct), "loss/ce": ce.detach(), "loss/pg": pg.detach()}
