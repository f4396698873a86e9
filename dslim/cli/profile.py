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

from dslim.cli.args import names_model, parse
from dslim.config import Config
from dslim.errors import UserError, exits_cleanly
from dslim.io.channels import read_named
from dslim.models import from_config
from dslim.models.complexity import profile_subnets
from dslim.models.registry import model_name


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


@exits_cleanly
def main(argv: Sequence[str] | None = None) -> None:
    cmd = parse(ProfileCommand, argv, __doc__ or "", require_recipe=not names_model(argv))
    if cmd.run is not None:
        from dslim.stages.run import open_run

        run = open_run(cmd.run)
        config, net = run.config, run.supernet
        names = list(cmd.widths) or ([] if cmd.channels else run.names())
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
    batches = []
    if cmd.latency:
        from dslim.deploy.latency_table import add_latency

        batches = add_latency(rows, net, subnets, cmd.latency, config.model.input_size)
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


if __name__ == "__main__":
    main()
