"""The `evaluate` stage: accuracy and cost of subnets (and of the dynamic model): `eval.json`, `pareto.png`.

Its `calibrate_batches` is how a run calibrates any subnet without BatchNorm statistics, wherever it does: here,
in each training stage's epoch validation, in the export stage and in the `evaluate` and `export` commands. They
get it through `calibration_batches` (this module owns `config.stages.evaluate`): the pipeline hands it to every
stage's context, the commands read it from the run's config.
"""

from __future__ import annotations

from dataclasses import dataclass

from dslim.config import Config, Positive
from dslim.evaluation.accuracy import run_evaluation
from dslim.evaluation.report import print_results, write_report
from dslim.models.base import Supernet
from dslim.models.registry import model_name
from dslim.stages.checks import check_names
from dslim.stages.context import StageContext
from dslim.stages.registry import register_stage
from dslim.stages.run import default_names


@dataclass(frozen=True)
class EvalConfig:
    """Final evaluation."""

    subnets: tuple[str, ...] = ()
    """Subnets to evaluate, by name or width (empty: every named subnet, those of named-subnets files included)."""
    calibrate_batches: Positive = 50
    """Training batches used to calibrate a subnet that has no BatchNorm statistics yet (calibrated or private BN)."""


def calibration_batches(config: Config) -> int:
    """Training batches that give a subnet without statistics its BatchNorm statistics, in this run."""
    return config.stages.evaluate.calibrate_batches  # type: ignore[attr-defined]


def evaluation_names(config: Config, net: Supernet, subnet_files: dict[str, dict]) -> list[str]:
    """The subnets a run evaluates unless told: this stage's `subnets`, else every named one (`default_names`)."""
    return list(config.stages.evaluate.subnets) or default_names(net, subnet_files)  # type: ignore[attr-defined]


def check(config: Config, net: Supernet, cfg: EvalConfig) -> None:
    check_names(config, net, cfg.subnets, "stages.evaluate.subnets")


@register_stage("evaluate", EvalConfig, reads=("supernet", "subnets"), writes=("report",), check=check)
def evaluate_stage(ctx: StageContext) -> None:
    """Accuracy and cost of the subnets (and the dynamic model): eval.json and pareto.png in the run directory."""
    cfg: EvalConfig = ctx.settings  # type: ignore[assignment]
    net = ctx.supernet()
    names = evaluation_names(ctx.config, net, ctx.subnet_files)
    rows, dynamic = run_evaluation(net, ctx.config, ctx.resolve(net, names), cfg.calibrate_batches, ctx.accelerator)
    ctx.metrics.write({"kind": "eval", "stage": ctx.name, "subnets": rows, "dynamic": dynamic})
    if ctx.accelerator.is_main_process:
        write_report(ctx.layout.root, rows, dynamic)
        print_results(rows, dynamic, f"{ctx.recipe}: {model_name(ctx.config.model)} at {ctx.config.model.input_size}px")
    ctx.accelerator.wait_for_everyone()
