"""Shared command-line parsing: `--recipe` picks the defaults, tyro parses every override on top of them.

Importing `dslim.recipes` registers the built-in stages, so `Config()` has their settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from typing import TypeVar

import tyro

from dslim import recipes
from dslim.config import Config
from dslim.errors import UserError

C = TypeVar("C")


def parse(
    command: type[C],
    argv: Sequence[str] | None,
    description: str,
    require_recipe: bool = True,
    config_file: str | None = None,
) -> C:
    """Parse `argv` into `command`, a dataclass with a `recipe: str` and a `config: Config` field.

    The recipe is read first so that `--help` shows that recipe's own defaults. `config_file` (a recorded config:
    `dslim.train --config`) takes the recipe's place: its config, validated as a recipe's (a bad field is named
    with the file), is the base the overrides apply to, and the recipe it records becomes `recipe`.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--recipe")
    known, _ = pre.parse_known_args(argv)
    asks_help = "-h" in argv or "--help" in argv
    recipe = known.recipe
    if config_file is not None:
        if recipe is not None:
            raise UserError("give --recipe R or --config FILE, not both (a recorded config already names its recipe)")
        from dslim.stages.run import read_config_file

        config, recorded = read_config_file(config_file)
        try:
            recipes.validate(config, config_file)
        except UserError as e:
            raise UserError(f"--config {config_file}: {e}") from None
        recipe = recorded or config_file
    elif recipe is None and require_recipe and not asks_help:
        raise UserError(f"--recipe is required: a name ({', '.join(recipes.names())}) or a path to a .py file")
    else:
        config = recipes.load(recipe) if recipe is not None else Config()
    fields = {f.name for f in dataclasses.fields(command)}  # type: ignore[arg-type]
    default = command(**({"recipe": recipe or ""} if "recipe" in fields else {}), config=config)  # type: ignore[call-arg]
    parsed = tyro.cli(command, default=default, args=argv, description=description)
    recipes.validate(parsed.config)  # type: ignore[attr-defined]
    return parsed


def names_model(argv: Sequence[str] | None) -> bool:
    """Whether the command line gives `--run D` (the run recorded its config) or `--model.module M` (a model of the
    user's own): then a recipe is not needed."""
    args = sys.argv[1:] if argv is None else list(argv)
    return any(a == o or a.startswith(o + "=") for a in args for o in ("--run", "--model.module"))
