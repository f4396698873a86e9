"""`python -m dslim.evaluate --run D [--widths W ...] [--json] [--batches N] [--split holdout]`: accuracy and cost.

Reads `D/config.json` and the latest finished stage's `model.safetensors`, evaluates the requested subnets (default:
the config's evaluation subnets, else every named one, those of the run's subnets files included) on the validation
split, prints a table and adds the rows to `D/eval.json` (rows of the same subnets are replaced, the others kept)
and redraws `D/pareto.png`; a model whose router was trained (a DS-Net gate, a BlockDrop policy) is evaluated
routing each image too. With calibrated or private BatchNorm, a subnet the artifact holds no statistics for (any
width of a universally slimmable range, a searched subnet) is calibrated on the fly from training batches; the
artifact itself is left as it is. Runs under `accelerate launch` too: the validation split is sharded and the counts
reduced.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import tyro

from dslim.errors import UserError, exits_cleanly


@dataclass(frozen=True)
class EvaluateCommand:
    run: str
    """Run directory (the `--out-dir` of `dslim.train`)."""
    widths: tuple[str, ...] = ()
    """Subnets to evaluate, by width (any width of a universally slimmable range) or name; default: the config's
    evaluation subnets, else all named."""
    json: bool = False
    """Print the report (what eval.json holds) as JSON on stdout and nothing else."""
    batches: int | None = None
    """Evaluate only the first N validation batches per process: a quick look, printed but not written to D."""
    calibrate_batches: int | None = None
    """Training batches to calibrate a subnet without statistics (default: the run's `stages.evaluate`)."""
    split: Literal["val", "holdout"] = "val"
    """Images to evaluate on: the validation split, or the run's held-out training images (`--data.holdout`, what
    a search scored subnets on); only `val` results are written to D."""


@exits_cleanly
def main(argv: Sequence[str] | None = None) -> None:
    cmd = tyro.cli(EvaluateCommand, args=sys.argv[1:] if argv is None else list(argv), description=__doc__)
    for option, value in (("--batches", cmd.batches), ("--calibrate-batches", cmd.calibrate_batches)):
        if value is not None and value < 1:
            raise UserError(f"{option} must be at least 1, not {value}")
    from dslim.models.registry import model_name
    from dslim.stages.evaluate import calibration_batches, evaluation_names
    from dslim.stages.run import open_run

    run = open_run(cmd.run)
    net, config = run.supernet, run.config
    names = list(cmd.widths) or evaluation_names(config, net, run.subnet_files)
    subnets = {name: run.resolve(name) for name in names}  # every bad name before any work
    from accelerate import Accelerator

    from dslim.evaluation.accuracy import run_evaluation
    from dslim.evaluation.report import merge, print_results, write_report

    accelerator = Accelerator()
    calibrate = calibration_batches(config) if cmd.calibrate_batches is None else cmd.calibrate_batches
    rows, dynamic = run_evaluation(net.to(accelerator.device), config, subnets, calibrate, accelerator, cmd.batches,
                                   cmd.split)  # fmt: skip
    if not accelerator.is_main_process:
        return
    report = merge(None, rows, dynamic)
    if cmd.batches is None and cmd.split == "val":
        report = write_report(run.dir, rows, dynamic)
    if cmd.json:
        print(json.dumps(report))
        return
    size = config.model.input_size
    where = f"{run.dir}: {model_name(config.model)} ({run.artifact.parent.name} stage) at {size}px, {cmd.split} split"
    print_results(rows, dynamic, where)


if __name__ == "__main__":
    main()
