"""The `evaluate` stage: accuracy and cost of subnets (and of the dynamic model): `eval.json`, `pareto.png`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from accelerate import Accelerator

from dslim.calibration import calibrate_missing, shard_of
from dslim.config import Config, Positive
from dslim.evaluation import evaluate, evaluate_dynamic
from dslim.models.base import Supernet
from dslim.models.registry import model_name
from dslim.report import print_results, write_report
from dslim.stages.checks import check_names
from dslim.stages.context import StageContext
from dslim.stages.layout import default_names
from dslim.stages.registry import register_stage
from dslim.subnet import Subnet


@dataclass(frozen=True)
class EvalConfig:
    """Final evaluation."""

    subnets: tuple[str, ...] = ()
    """Subnets to evaluate, by name or width (empty: every named subnet, those of named-subnets files included)."""
    calibrate_batches: Positive = 50
    """Training batches used to calibrate a subnet that has no BatchNorm statistics yet (calibrated or private BN)."""


def check(config: Config, net: Supernet, cfg: EvalConfig) -> None:
    check_names(config, net, cfg.subnets, "stages.evaluate.subnets")


def run_evaluation(
    net: Supernet,
    config: Config,
    subnets: Mapping[str, Subnet],
    accelerator: Accelerator | None = None,
    max_batches: int | None = None,
    calibrate_batches: int | None = None,
    split: Literal["val", "holdout"] = "val",
) -> tuple[list[dict], dict | None]:
    """What the stage and `dslim.evaluate` compute: the subnets (calibrated first if they must be) and, for a model
    whose router has been trained, the dynamic model, on `split`. Returns `(rows, dynamic row or None)`."""
    from dslim.data import build_loader

    calibrate_missing(net, config, subnets, accelerator=accelerator, num_batches=calibrate_batches)
    size = config.model.input_size

    def val():  # type: ignore[no-untyped-def]
        return build_loader(config.data, split, size, seed=config.seed, **shard_of(accelerator))

    rows = evaluate(net, subnets, val(), size, accelerator, max_batches)
    dynamic = None
    if net.is_dynamic and net.router_trained:
        dynamic = evaluate_dynamic(net, val(), size, accelerator, max_batches)
    return rows, dynamic


@register_stage("evaluate", EvalConfig, reads=("supernet", "subnets"), writes=("report",), check=check)
def evaluate_stage(ctx: StageContext) -> None:
    """Accuracy and cost of the subnets (and the dynamic model): eval.json and pareto.png in the run directory."""
    cfg: EvalConfig = ctx.settings  # type: ignore[assignment]
    net = ctx.supernet()
    names = list(cfg.subnets) or default_names(net, ctx.subnet_files)
    rows, dynamic = run_evaluation(net, ctx.config, ctx.resolve(net, names), ctx.accelerator)
    ctx.metrics.write({"kind": "eval", "stage": ctx.name, "subnets": rows, "dynamic": dynamic})
    if ctx.accelerator.is_main_process:
        write_report(ctx.layout.root, rows, dynamic)
        print_results(rows, dynamic, f"{ctx.recipe}: {model_name(ctx.config.model)} at {ctx.config.model.input_size}px")
    ctx.accelerator.wait_for_everyone()
