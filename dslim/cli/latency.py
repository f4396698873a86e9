"""`python -m dslim.latency --recipe R [--run D] --batch 1 64 [--layers N] [--out F]`: latency measured here.

Each named subnet (those of the run's subnets files too, with `--run`) runs as the standalone module `dslim.extract`
makes, on this machine's CPU threads or GPU; a dynamic model also gets each route (its exported graphs in
sequence, that route's decisions forced) and each graph alone. Median of `--repeats` after `--warmup` runs, per
batch size. Writes `latency.json` (into D with `--run`, else the current directory, or `--out`), which
`python -m dslim.profile ... --latency latency.json`, export cards and latency targets read. `--layers N` adds a
per-layer table (N random subnets besides the named ones) from which any subnet's latency is estimated: what a
search needs, since the subnets it finds are in no table; `--checks M` more random subnets are then measured apart
from the fit, and the command prints the table's error on every subnet it timed whole (written to the table as
`errors`). Weights are not needed: a recipe alone suffices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from dslim.cli.args import names_model, parse
from dslim.config import Config, NonNegative, Positive, at_least, in_range, validate_fields
from dslim.errors import UserError, exits_cleanly


@dataclass(frozen=True)
class LatencyCommand:
    recipe: str
    """Recipe name (see `recipes/`) or path to a recipe file (not needed with `--run`)."""
    config: Annotated[Config, tyro.conf.arg(name="")]
    run: str | None = None
    """A training run directory: its model and the named subnets of its subnets files; latency.json goes there."""
    batch: Annotated[tuple[int, ...], at_least(1)] = (1,)
    """Batch sizes to measure."""
    subnets: tuple[str, ...] = ()
    """Subnets to measure, by name or width; default: every named subnet."""
    out: str | None = None
    """Where to write the table (default: D/latency.json with --run, replacing the run's earlier table; else
    ./latency.json)."""
    overwrite: bool = False
    """Replace an existing table at --out (or ./latency.json); a run's own table is always replaced."""
    device: Literal["cpu", "cuda"] = "cpu"
    """Where to run: the CPU (with --threads threads) or the first GPU."""
    threads: Annotated[int | None, at_least(1)] = None
    """CPU threads PyTorch may use (default: PyTorch's choice, usually one per core)."""
    warmup: NonNegative = 3
    """Untimed runs before timing each entry."""
    repeats: Positive = 15
    """Most timed runs per entry; the median is kept. 5 run (or `repeats` if fewer), more until the last 5 agree
    within 5% or 1 s is spent on the entry. Every subnet is timed so in 2 rounds over the table and keeps its faster
    median (a slow spell of a shared machine must hit both)."""
    layers: Annotated[int, in_range(0, 1000)] = 0
    """Random subnets (drawn with `--seed`) to time layer by layer, besides the named ones: a per-layer table from
    which the latency of any subnet is estimated (8 to 32 fit well; each costs about as long as a named subnet)."""
    checks: Annotated[int, in_range(0, 1000)] = 4
    """With `--layers`: random subnets measured apart from the fit, on which the per-layer table's error is
    reported (the error on the subnets it was fitted on is reported too, and is smaller)."""
    wait_policy: Literal["passive", "active"] | None = None
    """How idle OpenMP threads wait for work (`OMP_WAIT_POLICY`, recorded in the table): `passive` (they sleep) or
    `active` (they spin). Default: the environment's `OMP_WAIT_POLICY`, which dslim sets to passive when it loads
    unless it is set. Spinning threads compete with any other work on the machine, which made timings on 2 busy
    cores many times slower and this command over 2 minutes; sleeping ones cost little on a quiet machine."""


@exits_cleanly
def main(argv: Sequence[str] | None = None) -> None:
    cmd = parse(LatencyCommand, argv, __doc__ or "", require_recipe=not names_model(argv))
    validate_fields(cmd)
    if argv is None:  # as a program (an in-process call keeps the environment it has)
        use_wait_policy(cmd.wait_policy)
    if not cmd.batch:
        raise UserError("--batch is empty: give the batch sizes to measure, e.g. --batch 1 64")
    import torch

    if cmd.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no GPU is available here; measure with --device cpu")
    if cmd.threads is not None:
        torch.set_num_threads(cmd.threads)
    from dslim.deploy.latency import measure_table
    from dslim.io import write_json
    from dslim.io.outputs import check_output
    from dslim.models import from_config
    from dslim.models.registry import model_name

    if cmd.run is not None:
        from dslim.stages.run import open_run

        run = open_run(cmd.run)
        config, net = run.config, run.supernet
        names = list(cmd.subnets) or run.names()
        subnets = {name: run.resolve(name) for name in names}
        out = Path(cmd.out) if cmd.out else run.dir / "latency.json"
    else:
        config, net = cmd.config, from_config(cmd.config.model)
        subnets = {name: net.resolve(name) for name in (list(cmd.subnets) or list(net.named_subnets()))}
        out = Path(cmd.out or "latency.json")
    if cmd.run is None or out.resolve() != (run.dir / "latency.json").resolve():
        check_output(out, overwrite=cmd.overwrite)
    model = config.model
    warn_if_busy(cmd.device)
    table = measure_table(net, subnets, model.input_size, cmd.batch, torch.device(cmd.device), cmd.warmup,
                          cmd.repeats, cmd.layers, model.channel_bins or 12, model.min_bin, config.seed,
                          cmd.checks)  # fmt: skip
    if cmd.layers:
        from dslim.deploy.latency_table import LatencyTable, estimate_errors

        table["errors"] = estimate_errors(LatencyTable(table), net)
    write_json(out, table)  # (a failed write is one line: the writer says which file and why)
    print_latency(table, f"{model_name(model)} at {model.input_size}px")
    if cmd.layers:
        print_errors(table)
    print(f"wrote {out}")


def use_wait_policy(policy: str | None) -> None:
    """Run under OpenMP wait policy `policy` (None: as the environment says). OpenMP reads `OMP_WAIT_POLICY` once,
    when PyTorch loads it (before any option is parsed), so the command runs itself again with the variable set
    when it differs."""
    import os
    import sys

    if policy is None or os.environ.get("OMP_WAIT_POLICY", "").upper() == policy.upper():
        return
    os.environ["OMP_WAIT_POLICY"] = policy.upper()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "dslim.latency", *sys.argv[1:]])


def warn_if_busy(device: str) -> None:
    """Timings on a machine busy with other work include waiting for it; with several threads OpenMP's default
    busy-waiting makes that far worse (over 100x at batch 1 on 2 busy cores: docs/deploy.md), so say so."""
    import os
    import sys

    import torch

    load, cpus = os.getloadavg()[0], os.cpu_count() or 1
    if device == "cpu" and load > cpus - 0.5:
        advice = ""
        if torch.get_num_threads() > 1 and os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
            advice = "; with several threads use --wait-policy passive (or --threads 1)"
        print(f"dslim: note: this machine is busy (load {load:.1f} on {cpus} cores): timings include waiting for "
              f"other work{advice}", file=sys.stderr)  # fmt: skip


def print_latency(table: dict, title: str) -> None:
    from dslim.ui import print_table

    batches = [str(b) for b in table["batches"]]
    dev = table["device"]
    where = f"{dev['name']}, {dev['threads']} threads" if dev["type"] == "cpu" else dev["name"]
    rows = [(name, f"{r['macs'] / 1e6:,.1f}", *(f"{r['ms'][b]:.2f}" for b in batches))
            for name, r in table["subnets"].items()]  # fmt: skip
    rows += [
        (f"route {name}", "", *(f"{r['ms'][b]:.2f}" for b in batches)) for name, r in table.get("routes", {}).items()
    ]
    load = f"load {dev['load_before'][0]:.1f} -> {dev['load'][0]:.1f}"
    print_table(f"{title}: latency on {where} ({load})", ("subnet", "MACs (M)", *(f"ms @{b}" for b in batches)), rows)


def print_errors(table: dict) -> None:
    """The per-layer table's estimate against the measured latency of every subnet timed whole."""
    from dslim.ui import print_table

    batches = [str(b) for b in table["batches"]]
    rows = [(r["subnet"] + (" (held out)" if r["held_out"] else ""),
             *(f"{r['ms'][b]:.2f} / {r['estimate'][b]:.2f} / {100 * r['error'][b]:+.1f}%" for b in batches))
            for r in table["errors"]]  # fmt: skip
    print_table("per-layer table: measured ms / estimated ms / error", ("subnet", *(f"@{b}" for b in batches)), rows)
    held = [abs(e) for r in table["errors"] if r["held_out"] for e in r["error"].values()]
    fitted = [abs(e) for r in table["errors"] if not r["held_out"] for e in r["error"].values()]
    print(f"largest error: {100 * max(held, default=0):.1f}% on subnets held out of the fit, "
          f"{100 * max(fitted, default=0):.1f}% on those it was fitted on")  # fmt: skip


if __name__ == "__main__":
    main()
