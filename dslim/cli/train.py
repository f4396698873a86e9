"""`python -m dslim.train --recipe R [--out-dir D] [--stages S ...] [--from F] [overrides ...]`: run a pipeline.

Runs the recipe's stages (e.g. supernet -> bn_recalibration -> evaluate) in D (default `runs/<recipe>`), writing
config.json, one folder per stage with its model.safetensors and resumable state, metrics.jsonl, eval.json and
pareto.png. Re-running the same command resumes: finished stages are skipped, an interrupted one continues from
its last checkpoint. `--stages NAME ...` runs only those stages (any registered stage, e.g. supernet,
bn_recalibration, gate, evaluate, export); `--stages.supernet.epochs 3` and the like are config overrides.
`--from F` starts the first stage run from the supernet artifact F. Works under `accelerate launch -m dslim.train`
and `torchrun -m dslim.train`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from dslim.cli.args import parse
from dslim.config import Config
from dslim.errors import exits_cleanly


@dataclass(frozen=True)
class TrainCommand:
    recipe: str
    """Recipe name (see `recipes/`) or path to a recipe file."""
    config: Annotated[Config, tyro.conf.arg(name="")]
    out_dir: str | None = None
    """Run directory (default: runs/<recipe>)."""
    from_: Annotated[str | None, tyro.conf.arg(name="from")] = None
    """Start the first stage run from this supernet artifact (a stage's model.safetensors)."""


def split_stages(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """`--stages a b` (a selection) out of `argv`; `--stages.x.y v` (overrides) stay in the rest."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--stages", nargs="+", default=[])
    known, rest = pre.parse_known_args(list(argv))
    return known.stages, rest


@exits_cleanly
def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    stages, rest = split_stages(argv)
    cmd = parse(TrainCommand, rest, __doc__ or "")
    from dslim.stages import run_pipeline

    out_dir = cmd.out_dir or str(Path("runs") / Path(cmd.recipe).stem)
    run_pipeline(cmd.config, out_dir, recipe=cmd.recipe, argv=argv, stages=stages, from_=cmd.from_)


if __name__ == "__main__":
    main()
