"""DS-Net stage II: gate training with sandwich gate sparsification (SGS) and a MAdds penalty.

Per micro-batch, with the supernet frozen and BatchNorm in eval mode:
- the smallest subnet classifies the batch without gradients; the SGS target of an image is the slimmest route if
  it was right (the image is easy), else the widest route;
- the model routes every image by a straight-through Gumbel-softmax sample of the gate (`forward_gumbel`);
- loss = sgs_weight * CE(gate logits, target) + label-smoothed CE(routed output, label)
  + macs_weight * mean((routed MAdds / macs_unit)^2), the MAdds differentiable through the one-hot.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dslim.complexity import measure
from dslim.config import GateConfig
from dslim.models.base import Supernet
from dslim.trainer import Batch, Method, StepContext


def freeze_all_but_gate(net: Supernet) -> None:
    """Only the gate learns in stage II."""
    net.requires_grad_(False)
    net.gate_block.gate.requires_grad_(True)


def route_macs(net: Supernet, input_size: int) -> torch.Tensor:
    """Exact MAdds per image of each route, the gate's own 1x1 conv included."""
    gate = net.gate_block.gate
    return torch.tensor(
        [float(measure(net, input_size, r).macs + gate.in_channels * gate.out_channels) for r in net.routes()]
    )


def gate_method(net: Supernet, input_size: int) -> Method:
    """The stage's step function; the routes' MAdds are measured once, here."""
    macs = route_macs(net, input_size)
    smallest = net.routes()[0]

    def gate_step(model: nn.Module, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        images, labels = batch
        cfg: GateConfig = ctx.cfg  # type: ignore[assignment]
        ctx.supernet.eval()  # frozen supernet: BN statistics, no dropout
        with torch.no_grad(), ctx.supernet.using(smallest), ctx.accelerator.autocast():
            easy = ctx.supernet(images).argmax(1) == labels
        target = torch.where(easy, 0, len(macs) - 1)
        with ctx.backward_pass(last=True):
            logits, gate, onehot = model(images, gumbel_tau=cfg.gumbel_tau)
            sgs = F.cross_entropy(gate.float(), target)
            ce = F.cross_entropy(logits, labels, label_smoothing=cfg.label_smoothing)
            routed = onehot @ macs.to(onehot.device)
            penalty = ((routed / cfg.macs_unit) ** 2).mean()
            loss = cfg.sgs_weight * sgs + ce + cfg.macs_weight * penalty
            ctx.backward(loss)
        return {
            "loss": loss.detach(),
            "loss/sgs": sgs.detach(),
            "loss/ce": ce.detach(),
            "macs_M": routed.detach().mean() / 1e6,
            "easy": easy.float().mean(),
        }

    return gate_step
