"""The `gate` stage: DS-Net stage II, only the gate learns (SGS + a MAdds or latency penalty)."""

from __future__ import annotations

import torch

from dslim.config import Config
from dslim.deploy.latency_table import LatencyTable
from dslim.errors import UserError
from dslim.evaluation.accuracy import evaluate_dynamic
from dslim.methods.gate import GateConfig, GateTraining
from dslim.models.base import Supernet
from dslim.stages.context import StageContext
from dslim.stages.registry import register_stage


def check(config: Config, net: Supernet, cfg: GateConfig) -> None:
    if not hasattr(net, "gate_block") or not net.is_dynamic:
        raise UserError(f"the gate stage needs a supernet with a gate (ds_mobilenet_v1 with --model.gate-routes > 0), "
                        f"not {net.arch}")  # fmt: skip
    route_latency(config, net, cfg)


def route_latency(config: Config, net: Supernet, cfg: GateConfig) -> torch.Tensor | None:
    """Each route's latency (ms at `cfg.latency_batch`) by the table, measured or estimated; None without one."""
    if cfg.latency_table is None:
        return None
    table = LatencyTable.read(cfg.latency_table)
    table.check(net, config.model.input_size)
    if cfg.latency_batch not in table.batches:
        raise UserError(f"--stages.gate.latency-table {cfg.latency_table} measured batches {table.batches} only, "
                        f"not {cfg.latency_batch}")  # fmt: skip
    return torch.tensor([table.latency(r, cfg.latency_batch, net)[0] for r in net.route_subnets()])


@register_stage("gate", GateConfig, check=check)
def train_gate(ctx: StageContext) -> None:
    """DS-Net stage II: only the gate learns (SGS + MAdds penalty), the supernet frozen with BN in eval mode."""
    cfg: GateConfig = ctx.settings  # type: ignore[assignment]
    net, size = ctx.supernet(), ctx.config.model.input_size
    check(ctx.config, net, cfg)
    trainer = ctx.trainer(net, GateTraining(cfg, net, size, route_latency(ctx.config, net, cfg)), cfg)
    ctx.accelerator.print(f"gate: {cfg.epochs} epochs over {len(net.routes())} routes, global batch "  # type: ignore[attr-defined]
                          f"{trainer.global_batch}")  # fmt: skip

    def evaluate_epoch(epoch: int) -> dict[str, float]:
        out = {}
        for prefix, model in (("", trainer.supernet), ("ema/", trainer.ema)):  # the original validated its EMA
            if model is not None:
                d = evaluate_dynamic(model, ctx.loader("val"), size, ctx.accelerator)
                out |= {
                    f"top1/{prefix}dynamic": round(d["top1"], 3),
                    f"macs_M/{prefix}dynamic": round(d["macs_mean"] / 1e6, 3),
                }
        return out

    trainer.fit(lambda epoch: ctx.loader("train", epoch), evaluate_epoch)
    net.requires_grad_(True)
    net.router_trained = True
    ctx.save_trained(trainer, net)
