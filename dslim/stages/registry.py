"""The stage registry: every stage a pipeline can run, with its settings and what it reads and writes.

A stage is a function `run(ctx: StageContext)` registered with `@register_stage(name, SettingsClass, reads=...,
writes=...)`. Its settings appear on the command line as `--stages.<name>.*` (the class's docstrings are the
help), its outputs at the paths `dslim.stages.layout` gives each kind, and the first kind it writes marks it done.
Nothing else in dslim lists stages: adding one is a module that registers it, plus a recipe that runs it.

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
from typing import TYPE_CHECKING

from dslim.config import Config, register_settings
from dslim.errors import UserError

if TYPE_CHECKING:
    from dslim.models.base import Supernet
    from dslim.stages.context import StageContext

KINDS = ("supernet", "subnets", "report", "export")


@dataclass(frozen=True)
class Stage:
    name: str
    settings: type
    """Its settings dataclass (`--stages.<name>.*`)."""
    run: Callable[[StageContext], None]
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


_STAGES: dict[str, Stage] = {}


def register_stage(
    name: str,
    settings: type,
    *,
    reads: tuple[str, ...] = ("supernet",),
    writes: tuple[str, ...] = ("supernet",),
    from_scratch: bool = False,
    check: Callable[[Config, Supernet, object], None] | None = None,
    uses_data: bool = True,
) -> Callable[[Callable[[StageContext], None]], Callable[[StageContext], None]]:
    """Register the decorated function as the stage `name`."""
    unknown = [k for k in (*reads, *writes) if k not in KINDS]
    assert not unknown and writes, f"stage {name}: artifact kinds must be among {KINDS}"

    def add(run: Callable[[StageContext], None]) -> Callable[[StageContext], None]:
        doc = (run.__doc__ or name).strip().splitlines()[0]
        _STAGES[name] = Stage(name, settings, run, reads, writes, from_scratch, check, uses_data, doc)
        register_settings(name, settings, doc)
        return run

    return add


def names() -> list[str]:
    return list(_STAGES)


def get(name: str) -> Stage:
    if name not in _STAGES:
        raise UserError(f"unknown stage {name!r}; available: {', '.join(_STAGES)}")
    return _STAGES[name]
