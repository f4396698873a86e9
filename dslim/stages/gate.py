"""The `gate` stage: DS-Net stage II, only the gate learns (SGS + MAdds penalty)."""

from __future__ import annotations

from dslim.config import Config
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


@register_stage("gate", GateConfig, check=check)
def train_gate(ctx: StageContext) -> None:
    """DS-Net stage II: only the gate learns (SGS + MAdds penalty), the supernet frozen with BN in eval mode."""
    cfg: GateConfig = ctx.settings  # type: ignore[assignment]
    net, size = ctx.supernet(), ctx.config.model.input_size
    check(ctx.config, net, cfg)
    trainer = ctx.trainer(net, GateTraining(cfg, net, size), cfg)
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
