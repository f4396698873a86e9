"""The `bn_recalibration` stage: BatchNorm statistics recomputed per subnet (DS-Net's BN reset, US-Net's
calibration)."""

from __future__ import annotations

from dataclasses import dataclass

from dslim.config import Config, Positive
from dslim.evaluation.calibration import recalibrate
from dslim.models.base import Supernet
from dslim.stages.checks import check_names
from dslim.stages.context import StageContext
from dslim.stages.registry import register_stage


@dataclass(frozen=True)
class BnCalibrationConfig:
    """BN recalibration: reset, then cumulative statistics per subnet from training batches, no gradients."""

    batches: Positive = 100
    """Training batches per subnet (per process; statistics are averaged across processes)."""
    subnets: tuple[str, ...] = ()
    """Subnets to calibrate (empty: every named subnet)."""


def check(config: Config, net: Supernet, cfg: BnCalibrationConfig) -> None:
    check_names(config, net, cfg.subnets, "stages.bn_recalibration.subnets")


@register_stage("bn_recalibration", BnCalibrationConfig, reads=("supernet", "subnets"), check=check)
def bn_recalibration(ctx: StageContext) -> None:
    """BatchNorm statistics recomputed per subnet, reduced across processes (BN reset / calibration)."""
    cfg: BnCalibrationConfig = ctx.settings  # type: ignore[assignment]
    net = ctx.supernet()
    subnets = ctx.resolve(net, cfg.subnets) if cfg.subnets else net.named_subnets()
    recalibrate(net, subnets, ctx.training_batches(), cfg.batches, ctx.accelerator)
    ctx.save_supernet(net, calibrated=list(subnets))
