"""`python -m dslim.profile --recipe R [--widths W ...] [--json]`: exact MACs and params of each subnet.

No data is needed: one forward of random images per subnet, costed by hooks on the executed (sliced) shapes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

import tyro

from dslim.cli import parse
from dslim.complexity import measure
from dslim.config import Config
from dslim.errors import exits_cleanly
from dslim.models import from_config


@dataclass(frozen=True)
class ProfileCommand:
    recipe: str
    """Recipe name (see `recipes/`) or path to a recipe file."""
    config: Annotated[Config, tyro.conf.arg(name="")]
    widths: tuple[str, ...] = ()
    """Subnets to profile, by width (any width in a universally slimmable range) or name; default: all named."""
    json: bool = False
    """Print a JSON list of {subnet, macs, params} on stdout and nothing else."""


def profile(config: Config, subnets: Sequence[str] = ()) -> list[dict]:
    """One row per subnet: name, MACs and params of the sliced subnet at the model's input size."""
    net = from_config(config.model)
    names = list(subnets) or list(net.named_subnets())
    resolved = [(name, net.resolve(name)) for name in names]  # all errors before any work
    rows = []
    for name, subnet in resolved:
        cost = measure(net, config.model.input_size, subnet)
        rows.append({"subnet": name, "macs": cost.macs, "params": cost.params})
    return rows


@exits_cleanly
def main(argv: Sequence[str] | None = None) -> None:
    cmd = parse(ProfileCommand, argv, __doc__ or "")
    rows = profile(cmd.config, cmd.widths)
    if cmd.json:
        print(json.dumps(rows))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{cmd.recipe}: {cmd.config.model.arch} at {cmd.config.model.input_size}px")
    for col in ("subnet", "MACs (M)", "params (M)"):
        table.add_column(col, justify="left" if col == "subnet" else "right")
    for r in rows:
        table.add_row(r["subnet"], f"{r['macs'] / 1e6:,.1f}", f"{r['params'] / 1e6:,.3f}")
    Console().print(table)


if __name__ == "__main__":
    main()
