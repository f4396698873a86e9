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

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import tyro

from dslim.config import Config, StagesConfig
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
    doc: str


_STAGES: dict[str, Stage] = {}
_settings_class: type | None = None


def register_stage(
    name: str,
    settings: type,
    *,
    reads: tuple[str, ...] = ("supernet",),
    writes: tuple[str, ...] = ("supernet",),
    from_scratch: bool = False,
    check: Callable[[Config, Supernet, object], None] | None = None,
) -> Callable[[Callable[[StageContext], None]], Callable[[StageContext], None]]:
    """Register the decorated function as the stage `name`."""
    unknown = [k for k in (*reads, *writes) if k not in KINDS]
    assert not unknown and writes, f"stage {name}: artifact kinds must be among {KINDS}"

    def add(run: Callable[[StageContext], None]) -> Callable[[StageContext], None]:
        global _settings_class
        doc = (run.__doc__ or name).strip().splitlines()[0]
        _STAGES[name] = Stage(name, settings, run, reads, writes, from_scratch, check, doc)
        _settings_class = None  # rebuilt with the new stage on next use
        return run

    return add


def names() -> list[str]:
    return list(_STAGES)


def get(name: str) -> Stage:
    if name not in _STAGES:
        raise UserError(f"unknown stage {name!r}; available: {', '.join(_STAGES)}")
    return _STAGES[name]


def stages_config_class() -> type:
    """The dataclass holding one settings object per registered stage (a subclass of `StagesConfig`)."""
    global _settings_class
    if _settings_class is None:
        fields = [
            (s.name, Annotated[s.settings, tyro.conf.arg(help=s.doc)], dataclasses.field(default_factory=s.settings))
            for s in _STAGES.values()
        ]
        _settings_class = dataclasses.make_dataclass("StagesConfig", fields, bases=(StagesConfig,), frozen=True)
    return _settings_class


def stages_config(**settings: object) -> StagesConfig:
    """Settings of every registered stage: the given ones, the others at their defaults."""
    unknown = [n for n in settings if n not in _STAGES]
    if unknown:
        raise UserError(f"unknown stage(s) {unknown}; available: {', '.join(_STAGES)}")
    for name, value in settings.items():
        if not isinstance(value, _STAGES[name].settings):
            raise UserError(f"stage {name} takes {_STAGES[name].settings.__name__}, not {type(value).__name__}")
    return stages_config_class()(**settings)
