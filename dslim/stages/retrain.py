"""The `retrain` stage: found subnets trained from scratch, jointly, as an S-Net of exactly those subnets.

The subnets are those of the run's named-subnets files (a search's `autoslim-300M` ...), or the ones `subnets`
names, plus channel files (`channels`: dslim JSON or mmrazor YAML, named by file stem). A fresh supernet of the
model's architecture, with no named subnets of its own (`Supernet.unnamed_kwargs`) and switchable BatchNorm by
default, is given exactly these names; the sandwich method with rule `all_widths` then trains every one of them
each step, largest first (AutoSlim's and mmrazor's retraining). The artifact records its own architecture
arguments and names, so evaluation and export rebuild it as trained, and `export` splits it into standalone models.

To train each subnet alone, give this stage one subnet per run (`--stages.retrain.subnets autoslim-300M`, or one
`--stages.retrain.channels FILE`) with its own `--out-dir`: an S-Net of one subnet is that network trained alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch

from dslim.config import BnMode, Config, Fraction, TrainConfig
from dslim.errors import UserError
from dslim.io.channels import read_named
from dslim.methods.sandwich import Sandwich, SandwichConfig
from dslim.models import from_config
from dslim.models.base import Supernet
from dslim.stages.checks import check_names
from dslim.stages.context import StageContext
from dslim.stages.registry import register_stage
from dslim.subnet import Subnet


@dataclass(frozen=True)
class RetrainConfig(TrainConfig):
    """Found subnets retrained from scratch as one S-Net of exactly those subnets (see `dslim.stages.retrain`)."""

    subnets: tuple[str, ...] = ()
    """Subnets to retrain, by name (the run's subnets files, or the model's own names); empty: every subnet of the
    run's subnets files, unless `channels` is given."""
    channels: tuple[str, ...] = ()
    """Channel files to retrain too (dslim subnet `.json` or mmrazor channel-config `.yaml`), named by file stem."""
    bn: BnMode = "switchable"
    """BatchNorm of the retrained network: `switchable` (affine and statistics per subnet, S-Net) by default."""
    label_smoothing: Fraction = 0.1
    """Label smoothing of the cross-entropy."""
    distill: Literal["none", "inplace"] = "none"
    """Targets of all but the largest: the labels (`none`, mmrazor's retraining), or the largest's detached
    softmax (`inplace`)."""


def _channel_files(config: Config, cfg: RetrainConfig, net: Supernet) -> dict[str, Subnet]:
    named = read_named(cfg.channels, net)
    clash = [n for n in named if n in cfg.subnets]
    if clash:
        raise UserError(f"--stages.retrain.channels: {clash[0]!r} is also in --stages.retrain.subnets; rename the file")
    return named


def fresh(template: Supernet, bn: str) -> Supernet:
    """A new network of `template`'s architecture without named subnets of its own (its names are to be given)."""
    net = type(template)(**template.unnamed_kwargs(bn))
    if net.builtin_subnets():
        raise UserError(f"{net.arch} names subnets of its own ({', '.join(net.builtin_subnets())}), which an S-Net of "
                        "found subnets would train too: retrain on a width-multiplier architecture")  # fmt: skip
    return net


def check(config: Config, net: Supernet, cfg: RetrainConfig) -> None:
    check_names(config, net, cfg.subnets, "stages.retrain.subnets")
    _channel_files(config, cfg, net)
    with torch.device("meta"):
        fresh(net, cfg.bn)


def sandwich_settings(cfg: RetrainConfig) -> SandwichConfig:
    """The sandwich method's settings that train every named subnet each step."""
    shared = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(TrainConfig)}
    return SandwichConfig(**shared, rule="all_widths", distill=cfg.distill, label_smoothing=cfg.label_smoothing)


@register_stage("retrain", RetrainConfig, reads=("subnets",), from_scratch=True, check=check)
def retrain(ctx: StageContext) -> None:
    """Found subnets retrained from scratch, jointly, as an S-Net of exactly those subnets."""
    cfg: RetrainConfig = ctx.settings  # type: ignore[assignment]
    with torch.device("meta"):  # only its structure and names are needed: free
        template = from_config(ctx.config.model)
    names = list(cfg.subnets) or ([] if cfg.channels else list(ctx.subnet_files))
    subnets = {**ctx.resolve(template, names), **_channel_files(ctx.config, cfg, template)}
    if not subnets:
        raise UserError("nothing to retrain: run the search stage first, or give --stages.retrain.subnets NAME ... "
                        "or --stages.retrain.channels FILE ...")  # fmt: skip
    net = fresh(template, cfg.bn)
    net.name_subnets(subnets)
    net.to(ctx.accelerator.device)
    settings = sandwich_settings(cfg)
    trainer = ctx.trainer(net, Sandwich(settings), settings)
    ctx.accelerator.print(f"retrain: {', '.join(subnets)} jointly from scratch, {cfg.epochs} epochs, {cfg.bn} BN, "
                          f"global batch {trainer.global_batch}, peak lr {trainer.peaks['weights']:.4g}")  # fmt: skip
    trainer.fit(lambda epoch: ctx.loader("train", epoch), ctx.epoch_evaluator(trainer, subnets))
    ctx.save_trained(trainer)
