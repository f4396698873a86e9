"""The stage registry: every stage a pipeline can run, with its settings and what it reads and writes.

A stage is a function `run(ctx)` of a `dslim.stages.context.StageContext`, registered with
`@register_stage(name, SettingsClass, reads=..., writes=...)`. Its settings appear on the command line as
`--stages.<name>.*` (the class's docstrings are the help), its outputs at the paths `dslim.stages.layout` gives
each kind, and the first kind it writes marks it done.
Nothing else in dslim lists stages: adding one is a module that registers it, plus a recipe that runs it. The
registry holds specs only, never the context type: the context holds its stage's spec (no import circle).

Artifact kinds:
- `supernet`: `<stage>/model.safetensors`, a whole supernet (weights, BN statistics, names) for later stages;
- `subnets`: `<stage>/subnets.json`, named subnets (`{name: {"subnet", "macs", "params", ...score}}`) that every
  later stage and command resolves by name, like the supernet's own names;
- `report`: `eval.json` (and `pareto.png`) in the run directory;
- `export`: `<stage>/done.json` after the standalone models in `<stage>/`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dslim.config import Config, register_settings
from dslim.models.base import Supernet
from dslim.registry import Registry

KINDS = ("supernet", "subnets", "report", "export")


@dataclass(frozen=True)
class Stage:
    name: str
    settings: type
    """Its settings dataclass (`--stages.<name>.*`)."""
    run: Callable[[Any], None]
    """`run(ctx)`, `ctx` a `StageContext`."""
    reads: tuple[str, ...]
    """Artifact kinds it reads: `supernet` (the nearest earlier stage's, or `--from`), `subnets` (every finished
    stage's named subnets)."""
    writes: tuple[str, ...]
    """Artifact kinds it writes; the first one's file marks the stage done."""
    from_scratch: bool
    """It may start without a supernet to read (it builds one from the model settings)."""
    check: Callable[[Config, Supernet, object], None] | None
    """Checks of its settings against the run's model, before any work (`check(config, net, settings)`)."""
    uses_data: bool
    """It reads the dataset (checked before any work: present, classes within the classifier's)."""
    doc: str


STAGES: Registry[Stage] = Registry("stage")
"""Every stage, in registration order (a pipeline's order: `dslim.stages` imports the built-in ones in it)."""


def register_stage(
    name: str,
    settings: type,
    *,
    reads: tuple[str, ...] = ("supernet",),
    writes: tuple[str, ...] = ("supernet",),
    from_scratch: bool = False,
    check: Callable[[Config, Supernet, object], None] | None = None,
    uses_data: bool = True,
) -> Callable[[Callable[[Any], None]], Callable[[Any], None]]:
    """Register the decorated function as the stage `name`."""
    unknown = [k for k in (*reads, *writes) if k not in KINDS]
    assert not unknown and writes, f"stage {name}: artifact kinds must be among {KINDS}"

    def add(run: Callable[[Any], None]) -> Callable[[Any], None]:
        doc = (run.__doc__ or name).strip().splitlines()[0]
        STAGES.register(name, Stage(name, settings, run, reads, writes, from_scratch, check, uses_data, doc))
        register_settings(name, settings, doc)
        return run

    return add


def names() -> list[str]:
    return STAGES.names()


def get(name: str) -> Stage:
    return STAGES.get(name)
