"""`python -m dslim.train (--recipe R | --config F) [--out-dir D] [--stages S ...] [--from F] [overrides ...]`: run a
pipeline.

Runs the recipe's stages (e.g. supernet -> bn_recalibration -> evaluate) in D (default `runs/<recipe>`), writing
config.json, one folder per stage with its model.safetensors and resumable state, metrics.jsonl, eval.json and
pareto.png. Re-running the same command resumes: finished stages are skipped, an interrupted one continues from
its last checkpoint. `--stages NAME ...` runs only those stages (any registered stage, e.g. supernet,
bn_recalibration, gate, evaluate, export); `--stages.supernet.epochs 3` and the like are config overrides.
`--from F` starts the first selected stage from the supernet artifact F (`--from-new-classifier` when F has another
number of classes). Works under `accelerate launch -m dslim.train`
and `torchrun -m dslim.train`.

`--config F` trains a recorded config again instead of a recipe: a run's `config.json`, a model folder's card
(`config.json`), or a config of one's own as JSON or YAML (the resolved config's fields, nested as in config.json);
the overrides apply on top, and it is validated as a recipe is (a bad field is named with the file).
`--log-with tensorboard wandb mlflow trackio` (or `all`) also logs to those experiment trackers; `--tensorboard` is
`--log-with tensorboard`.
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
from dslim.errors import UserError, exits_cleanly


@dataclass(frozen=True)
class TrainCommand:
    recipe: str
    """Recipe name (see `recipes/`) or path to a recipe file (or `--config F`: a recorded config)."""
    config: Annotated[Config, tyro.conf.arg(name="")]
    out_dir: str | None = None
    """Run directory (default: runs/<recipe>)."""
    from_: Annotated[str | None, tyro.conf.arg(name="from")] = None
    """Start the first selected stage from this supernet artifact (a stage's model.safetensors, an import). It must
    be of the run's model (--model.*: architecture, widths, classes); not used when that stage is finished."""
    from_new_classifier: bool = False
    """With --from: the artifact has another number of classes; start from its weights with a new classifier for
    this run's --model.num-classes (fine-tuning on other data). Never done without this flag."""


def split_options(argv: Sequence[str]) -> tuple[list[str], str | None, list[str]]:
    """`--stages a b` (a selection) and `--config F` out of `argv`; `--stages.x.y v` (overrides) stay in the rest,
    with `--tensorboard` (the switch of earlier dslims) turned into `--log-with ... tensorboard`."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--stages", nargs="+", default=[])
    pre.add_argument("--config")
    pre.add_argument("--tensorboard", action="store_true")
    pre.add_argument("--log-with", nargs="+")
    known, rest = pre.parse_known_args(list(argv))
    trackers = [*(known.log_with or []), *(["tensorboard"] if known.tensorboard else [])]
    return known.stages, known.config, rest + (["--log-with", *dict.fromkeys(trackers)] if trackers else [])


@exits_cleanly
def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    stages, config_file, rest = split_options(argv)
    cmd = parse(TrainCommand, rest, __doc__ or "", config_file=config_file)
    from dslim.stages import run_pipeline

    if cmd.out_dir is not None and not cmd.out_dir.strip():
        raise UserError("--out-dir is empty: give the run directory (default: runs/<recipe>)")
    out_dir = cmd.out_dir or str(Path("runs") / Path(cmd.recipe).stem)
    run_pipeline(cmd.config, out_dir, recipe=cmd.recipe, argv=argv, stages=stages, from_=cmd.from_,
                 new_classifier=cmd.from_new_classifier)  # fmt: skip


if __name__ == "__main__":
    main()
