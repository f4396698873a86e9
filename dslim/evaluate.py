"""`python -m dslim.evaluate --run D [--widths W ...] [--json] [--batches N]`: accuracy and cost of subnets.

Reads `D/config.json` and the latest finished stage's `model.safetensors`, evaluates the requested subnets (default:
the config's evaluation subnets, else every named one) on the validation split, prints a table and writes
`D/eval.json` and `D/pareto.png`; after a gate stage the dynamic model (per-input routing) is evaluated too.
With calibrated BatchNorm (US-Net, AutoSlim, DMCP), any width in the range is calibrated on the fly from training
batches if the artifact holds no statistics for it; the artifact itself is left as it is. Runs under
`accelerate launch` too: the validation split is sharded and the counts reduced.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass

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


def print_table(rows: list[dict], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("subnet", "MACs (M)", "params (M)", "top-1 (%)", "top-5 (%)"):
        table.add_column(col, justify="left" if col == "subnet" else "right")
    for r in rows:
        table.add_row(r["subnet"], f"{r['macs'] / 1e6:,.1f}", f"{r['params'] / 1e6:,.3f}", f"{r['top1']:.2f}",
                      f"{r['top5']:.2f}")  # fmt: skip
    Console().print(table)


@exits_cleanly
def main(argv: Sequence[str] | None = None) -> None:
    cmd = tyro.cli(EvaluateCommand, args=sys.argv[1:] if argv is None else list(argv), description=__doc__)
    if cmd.batches is not None and cmd.batches < 1:
        raise UserError(f"--batches must be at least 1, not {cmd.batches}")
    from dslim.rundir import open_run

    run = open_run(cmd.run)
    for name in cmd.widths:  # every bad name before any work
        run.supernet.resolve(name)
    from accelerate import Accelerator

    from dslim.calibration import shard_of
    from dslim.data import build_loader
    from dslim.evaluation import evaluate_dynamic, run_evaluation, write_report
    from dslim.stages import ARTIFACT

    accelerator = Accelerator()
    supernet, config, size = run.supernet.to(accelerator.device), run.config, run.config.model.input_size
    rows = run_evaluation(
        supernet, config, cmd.widths, accelerator=accelerator, max_batches=cmd.batches,
        calibrate_batches=cmd.calibrate_batches,
    )  # fmt: skip
    dynamic = None
    if hasattr(supernet, "forward_dynamic") and (run.dir / "gate" / ARTIFACT).is_file():  # a trained gate
        val = build_loader(config.data, "val", size, seed=config.seed, **shard_of(accelerator))
        dynamic = evaluate_dynamic(supernet, val, size, accelerator, cmd.batches)
    if not accelerator.is_main_process:
        return
    report = {"subnets": rows, **({"dynamic": dynamic} if dynamic is not None else {})}
    if cmd.batches is None:
        write_report(rows, run.dir, dynamic)
    if cmd.json:
        print(json.dumps(report))
        return
    shown = rows + ([{**dynamic, "subnet": "dynamic", "macs": round(dynamic["macs_mean"])}] if dynamic else [])
    print_table(shown, f"{run.dir}: {config.model.arch} ({run.artifact.parent.name} stage) at {size}px")
    if dynamic:
        print("routes: " + ", ".join(f"{k} {v}" for k, v in dynamic["routes"].items()))


if __name__ == "__main__":
    main()
