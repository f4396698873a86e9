"""`python -m dslim.profile --recipe R [--widths W ...] [--channels FILE ...] [--json]`: exact MACs and params.

No data is needed: one forward of random images per subnet, costed by hooks on the executed (sliced) shapes.
`--model.module FILE.py:NAME` profiles a model of your own, converted (no recipe needed; `--model.input-size` is its
input), after what its conversion found (channel groups, and what stays at full width and why). `--run D` profiles a
training run's model instead (its config), so names from its named-subnets files (a search's `autoslim-300M`, a
sample's `dmcp-expected`) resolve as the supernet's own names do. `--latency latency.json` (from `python -m
dslim.latency`) adds each subnet's measured latency per batch size, or its estimate (marked `~`) when the table has
per-layer times; `-` where the table can say nothing. `--channels` profiles channel configurations from files (dslim
subnet `.json`, mmrazor channel-config `.yaml`), one row per file named by its stem; a file that does not fit the
model is refused, naming its first offending entry.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

import tyro

from dslim.channels import read_named
from dslim.cli import parse
from dslim.complexity import measure
from dslim.config import Config
from dslim.errors import UserError, exits_cleanly
from dslim.models import from_config
from dslim.models.base import Supernet
from dslim.models.registry import model_name
from dslim.subnet import Subnet


@dataclass(frozen=True)
class ProfileCommand:
    recipe: str
    """Recipe name (see `recipes/`) or path to a recipe file (not needed with `--run` or `--model.module`)."""
    config: Annotated[Config, tyro.conf.arg(name="")]
    widths: tuple[str, ...] = ()
    """Subnets to profile, by width (any width in a universally slimmable range) or name; default: all named."""
    channels: tuple[str, ...] = ()
    """Channel-configuration files to profile (dslim subnet `.json`, mmrazor channel-config `.yaml`), each a row
    named by its file stem."""
    run: str | None = None
    """A training run directory: profile its model and the named subnets of its subnets files."""
    json: bool = False
    """Print a JSON list of {subnet, macs, params} on stdout and nothing else."""
    latency: str | None = None
    """A latency table (`python -m dslim.latency`): add each subnet's latency (JSON: `latency_ms`, per batch size,
    and `latency_estimated`)."""


def profile_subnets(net: Supernet, subnets: dict[str, Subnet], input_size: int) -> list[dict]:
    """One row per subnet: name, MACs and params of the sliced subnet at `input_size`."""
    rows = []
    for name, subnet in subnets.items():
        cost = measure(net, input_size, subnet)
        rows.append({"subnet": name, "macs": cost.macs, "params": cost.params})
    return rows


def add_latency(rows: list[dict], net: Supernet, subnets: dict[str, Subnet], path: str, input_size: int) -> list[int]:
    """Each row's `latency_ms` (`{batch: ms}`, or None) and `latency_estimated` from the table at `path`; returns
    the table's batch sizes."""
    from dslim.timing import LatencyTable

    table = LatencyTable.read(path)
    table.check(net, input_size)
    for row in rows:
        subnet = subnets[row["subnet"]]
        found = {b: table.latency(subnet, b, net) for b in table.batches} if table.answers(subnet) else {}
        row["latency_ms"] = {str(b): round(ms, 4) for b, (ms, _) in found.items()} or None
        row["latency_estimated"] = any(estimated for _, estimated in found.values())
    return table.batches


@exits_cleanly
def main(argv: Sequence[str] | None = None) -> None:
    cmd = parse(ProfileCommand, argv, __doc__ or "", require_recipe=not _has(argv, "--run", "--model.module"))
    if cmd.run is not None:
        from dslim.stages.layout import open_run

        run = open_run(cmd.run)
        config, net = run.config, run.supernet
        every = [*net.named_subnets(), *(n for n in run.subnet_files if n not in net.named_subnets())]
        names = list(cmd.widths) or ([] if cmd.channels else every)
        subnets = {n: run.resolve(n) for n in names}
        title = f"{cmd.run}: {model_name(config.model)} at {config.model.input_size}px"
    else:
        if not cmd.recipe and not cmd.config.model.module:
            raise UserError("give --recipe R, --run D or --model.module FILE.py:NAME")
        config = cmd.config
        net = from_config(config.model)
        names = list(cmd.widths) or ([] if cmd.channels else list(net.named_subnets()))
        subnets = {name: net.resolve(name) for name in names}  # all errors before any work
        if config.model.module and not cmd.json:
            print(net.describe())  # type: ignore[attr-defined]
        title = f"{cmd.recipe or 'profile'}: {model_name(config.model)} at {config.model.input_size}px"
    subnets |= read_named(cmd.channels, net)
    rows = profile_subnets(net, subnets, config.model.input_size)
    batches = add_latency(rows, net, subnets, cmd.latency, config.model.input_size) if cmd.latency else []
    if cmd.json:
        print(json.dumps(rows))
        return
    from dslim.ui import print_table

    def latency(row: dict, b: int) -> str:
        if row["latency_ms"] is None:
            return "-"
        return ("~" if row["latency_estimated"] else "") + f"{row['latency_ms'][str(b)]:.2f}"

    columns = ("subnet", "MACs (M)", "params (M)", *(f"ms @{b}" for b in batches))
    print_table(title, columns, [(r["subnet"], f"{r['macs'] / 1e6:,.1f}", f"{r['params'] / 1e6:,.3f}",
                                  *(latency(r, b) for b in batches)) for r in rows])  # fmt: skip


def _has(argv: Sequence[str] | None, *options: str) -> bool:
    import sys

    args = sys.argv[1:] if argv is None else list(argv)
    return any(a == o or a.startswith(o + "=") for a in args for o in options)


if __name__ == "__main__":
    main()
