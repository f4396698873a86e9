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


def parse(command: type[C], argv: Sequence[str] | None, description: str, require_recipe: bool = True) -> C:
    """Parse `argv` into `command`, a dataclass with a `recipe: str` and a `config: Config` field.

    The recipe is read first so that `--help` shows that recipe's own defaults.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--recipe")
    known, _ = pre.parse_known_args(argv)
    asks_help = "-h" in argv or "--help" in argv
    if known.recipe is None and require_recipe and not asks_help:
        raise UserError(f"--recipe is required: a name ({', '.join(recipes.names())}) or a path to a .py file")
    config = recipes.load(known.recipe) if known.recipe else Config()
    fields = {f.name for f in dataclasses.fields(command)}  # type: ignore[arg-type]
    default = command(**({"recipe": known.recipe or ""} if "recipe" in fields else {}), config=config)  # type: ignore[call-arg]
    parsed = tyro.cli(command, default=default, args=argv, description=description)
    recipes.validate(parsed.config)  # type: ignore[attr-defined]
    return parsed


def names_model(argv: Sequence[str] | None) -> bool:
    """Whether the command line gives `--run D` (the run recorded its config) or `--model.module M` (a model of the
    user's own): then a recipe is not needed."""
    args = sys.argv[1:] if argv is None else list(argv)
    return any(a == o or a.startswith(o + "=") for a in args for o in ("--run", "--model.module"))
