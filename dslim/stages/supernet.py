"""The `supernet` stage: sandwich training of the whole supernet (S-Net, US-Net, DS-Net stage I, AutoSlim)."""

from __future__ import annotations

from collections.abc import Sequence

from dslim.config import Config
from dslim.errors import UserError
from dslim.methods.sandwich import Sandwich, SandwichConfig
from dslim.models.base import Supernet
from dslim.stages.checks import check_names
from dslim.stages.context import StageContext
from dslim.stages.registry import register_stage
from dslim.subnet import Subnet


def eval_subnets(net: Supernet, names: Sequence[str]) -> dict[str, Subnet]:
    """`names` resolved, or the smallest and largest, called by their own names where they have one."""
    if names:
        return {name: net.resolve(name) for name in names}
    return {net.name_of(s, label): s for label, s in (("smallest", net.smallest()), ("largest", net.largest()))}


def check(config: Config, net: Supernet, cfg: SandwichConfig) -> None:
    if cfg.distill == "ieb" and cfg.ema_decay <= 0:
        raise UserError("--stages.supernet.distill ieb learns from an EMA teacher: set --stages.supernet.ema-decay")
    sampler = cfg.sampler
    if sampler == "named" and not cfg.random_subnets:
        raise UserError("--stages.supernet.sampler named draws from --stages.supernet.random-subnets: list some")
    if sampler == "groups":
        net.group_choices(config.model.channel_bins, config.model.min_bin)  # refuses bins it cannot make
    if sampler == "width" and getattr(net, "width_range", None) is None:
        raise UserError("--stages.supernet.sampler width needs a universally slimmable model: set --model.width-range")
    check_names(config, net, cfg.random_subnets, "stages.supernet.random_subnets")
    check_names(config, net, cfg.eval_subnets, "stages.supernet.eval_subnets")


@register_stage("supernet", SandwichConfig, from_scratch=True, check=check)
def train_supernet(ctx: StageContext) -> None:
    """Sandwich-rule training of the whole supernet (S-Net, US-Net, DS-Net stage I, AutoSlim)."""
    cfg: SandwichConfig = ctx.settings  # type: ignore[assignment]
    net = ctx.supernet()
    model = ctx.config.model
    trainer = ctx.trainer(net, Sandwich(cfg, model.channel_bins, model.min_bin), cfg)
    ctx.accelerator.print(f"supernet: {cfg.epochs} epochs, rule {cfg.rule}, distill {cfg.distill}, global batch "
                          f"{trainer.global_batch}, peak lr {trainer.peaks['weights']:.4g}")  # fmt: skip
    trainer.fit(
        lambda epoch: ctx.loader("train", epoch), ctx.epoch_evaluator(trainer, eval_subnets(net, cfg.eval_subnets))
    )
    ctx.save_trained(trainer)
