"""The `bn_recalibration` stage: BatchNorm statistics recomputed per subnet (DS-Net's BN reset, US-Net's
calibration)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from dslim.config import Config, NonNegative, Positive, in_range
from dslim.evaluation.calibration import recalibrate
from dslim.models.base import Supernet
from dslim.stages.checks import check_names
from dslim.stages.context import StageContext
from dslim.stages.registry import register_stage


@dataclass(frozen=True)
class BnCalibrationConfig:
    """BN recalibration: reset, then statistics per subnet from training batches (training augmentation), no
    gradients."""

    batches: Positive = 100
    """Training batches per subnet (per process; statistics are averaged across processes)."""
    batch_size: NonNegative = 0
    """Images per calibration batch per process (0: `data.batch_size`; DS-Net's BN reset: 4 x 64 = 256)."""
    momentum: Annotated[float | None, in_range(0.0, 1.0, open_low=True)] = None
    """None: a cumulative average over all batches (what the statistics are meant to be); a number: PyTorch's
    exponential average with that momentum (DS-Net's original reset: 0.1, dominated by the last few batches)."""
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
    recalibrate(net, subnets, ctx.training_batches(cfg.batch_size), cfg.batches, ctx.accelerator, momentum=cfg.momentum)
    ctx.save_supernet(net, calibrated=list(subnets))
