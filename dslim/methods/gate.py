"""DS-Net stage II: gate training with sandwich gate sparsification (SGS) and a MAdds (or latency) penalty.

Only the gate learns; the supernet is frozen with BatchNorm in eval mode. Per micro-batch:
- the smallest subnet classifies the batch without gradients; the SGS target of an image is the slimmest route if
  it was right (the image is easy), else the widest route;
- the model routes every image by a straight-through Gumbel-softmax sample of the gate (`forward_gumbel`);
- loss = sgs_weight * CE(gate logits, target) + CE(routed output, label), both label-smoothed as the original's,
  + macs_weight * (mean routed cost)^2: the square of the batch's mean, as the original's, the cost differentiable
  through the one-hot: the route's MAdds / macs_unit, or, given each route's latency (ms, from a latency table),
  its ms / latency_unit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from dslim.config import Fraction, NonNegativeFloat, Positive, TrainConfig, at_least
from dslim.models.base import Supernet
from dslim.training import Batch, Method, ParamSet, StepContext


@dataclass(frozen=True)
class GateConfig(TrainConfig):
    """DS-Net stage II: only the gate trains (see `dslim.methods.gate`)."""

    label_smoothing: Fraction = 0.1
    """Label smoothing of the cross-entropy of the routed output."""
    sgs_weight: NonNegativeFloat = 1.0
    """Weight of the gate's cross-entropy against the SGS target (on logits, not the original's double softmax)."""
    sgs_label_smoothing: Fraction = 0.1
    """Label smoothing of the SGS cross-entropy (the original smoothed it as the task loss)."""
    macs_weight: NonNegativeFloat = 0.5
    """Weight of the MAdds penalty: the square of the batch's mean routed MAdds (in `macs_unit`)."""
    macs_unit: Annotated[float, at_least(1.0)] = 1e9
    """MAdds are divided by this before squaring (1e9: GMAdds, as the original)."""
    gumbel_tau: Annotated[float, at_least(1e-3)] = 1.0
    """Gumbel-softmax temperature of the straight-through route samples in training."""
    latency_table: str | None = None
    """Penalize each route's latency instead of its MAdds: the model's `latency.json`, measured on the target device
    (`python -m dslim.latency --recipe R --batch 1`, which times every route)."""
    latency_batch: Positive = 1
    """Batch size whose latencies the penalty uses (one the table measured)."""
    latency_unit: NonNegativeFloat = 0.0
    """Latencies are divided by this (ms) before squaring; 0: the unit that gives the widest route the penalty its
    MAdds would, so that `macs_weight` keeps its meaning and only the routes' relative costs change."""


class GateTraining(Method):
    """The gate's weights alone, one optimizer; the routes' costs are measured once, at construction (MAdds, or
    `route_ms`: each route's latency)."""

    def __init__(self, cfg: GateConfig, net: Supernet, input_size: int, route_ms: torch.Tensor | None = None) -> None:
        self.cfg = cfg
        self.macs = net.route_macs(input_size)  # type: ignore[attr-defined]
        self.costs = self.macs / cfg.macs_unit
        if route_ms is not None:
            unit = cfg.latency_unit or float(route_ms[-1]) * cfg.macs_unit / float(self.macs[-1])
            self.costs = route_ms.double() / unit
        self.smallest = net.routes()[0]  # type: ignore[attr-defined]

    def param_sets(self, net: Supernet) -> dict[str, ParamSet]:
        return {"gate": ParamSet(list(net.gate_block.gate.parameters()), self.cfg.optim, self.cfg.schedule)}  # type: ignore[attr-defined]

    def step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        images, labels = batch
        cfg, net = self.cfg, ctx.supernet
        net.eval()  # frozen supernet: BN statistics, no dropout
        with torch.no_grad(), net.using(self.smallest), ctx.accelerator.autocast():
            easy = net(images).argmax(1) == labels
        target = torch.where(easy, 0, len(self.macs) - 1)
        with ctx.backward_pass(last=True):
            logits, gate, onehot = model(images, gumbel_tau=cfg.gumbel_tau)
            sgs = F.cross_entropy(gate.float(), target, label_smoothing=cfg.sgs_label_smoothing)
            ce = F.cross_entropy(logits, labels, label_smoothing=cfg.label_smoothing)
            routed = onehot @ self.macs.to(onehot.device)
            penalty = ((onehot @ self.costs.to(onehot.device, onehot.dtype)).mean()) ** 2
            loss = cfg.sgs_weight * sgs + ce + cfg.macs_weight * penalty
            ctx.backward(loss)
        return {
            "loss": loss.detach(),
            "loss/sgs": sgs.detach(),
            "loss/ce": ce.detach(),
            "macs_M": routed.detach().mean() / 1e6,
            "easy": easy.float().mean(),
        }
