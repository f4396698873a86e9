"""Reading a training run back: its recorded config, the supernet of its latest finished stage, its named subnets.

The one reader of a run directory for the commands (`open_run`); the pipeline reads the same files through
`dslim.stages.layout.RunLayout`, and a running stage resolves names as `Run.resolve` does (`resolve`).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path

from dslim.config import Config, StagesConfig, stages_config_class
from dslim.errors import UserError
from dslim.io.artifacts import load_supernet
from dslim.models.base import Supernet
from dslim.models.registry import arch_of
from dslim.stages.layout import RunLayout, stage_order
from dslim.subnet import Subnet


# -- reading config.json back --------------------------------------------------------------------------------------
def _convert(hint: object, value: object, where: str) -> object:
    """`value` (as JSON decoded it) turned into the type `hint` describes: dataclasses and tuples rebuilt."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        return _convert(args[0], value, where)
    if value is None:
        return None
    if hint is StagesConfig:
        hint = stages_config_class()
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise UserError(f"{where} should be an object, not {value!r}")
        return _dataclass(hint, value, where)  # type: ignore[arg-type]
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, where) if len(inner) == 1 else value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where} should be a list, not {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise UserError(f"{where} should have {len(args)} entries, not {len(value)}")
        return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _dataclass(cls: type, obj: dict, where: str) -> object:
    hints = typing.get_type_hints(cls, include_extras=True)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(obj) - names)
    if unknown:
        raise UserError(f"{where} has fields this dslim does not know: {unknown} (written by another version?)")
    return cls(**{k: _convert(hints[k], v, f"{where}.{k}") for k, v in obj.items()})


def config_from_json(obj: dict) -> Config:
    """The `Config` that `dataclasses.asdict` turned into `obj`; missing fields take their defaults."""
    return _dataclass(Config, obj, "config")  # type: ignore[return-value]


def load_config(run_dir: str | Path) -> Config:
    """The resolved config a training run recorded in `run_dir/config.json`."""
    layout = RunLayout(run_dir)
    if not layout.root.is_dir():
        raise UserError(f"run directory {run_dir} does not exist (give the --out-dir of a dslim.train run)")
    if not layout.config.is_file():
        raise UserError(f"{run_dir} is not a dslim run: config.json is missing (written by dslim.train --out-dir)")
    try:
        obj = json.loads(layout.config.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{layout.config} is not readable JSON ({e})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("config"), dict):
        raise UserError(f'{layout.config} has no "config" object: it was not written by dslim.train')
    return config_from_json(obj["config"])


@dataclass
class Run:
    """A run directory opened for evaluation, export or profiling."""

    layout: RunLayout
    config: Config
    artifact: Path
    supernet: Supernet
    subnet_files: dict[str, dict]
    """Named subnets of the run's `subnets` artifacts (search results, samples)."""

    @property
    def dir(self) -> Path:
        return self.layout.root

    def resolve(self, name: str) -> Subnet:
        """A subnet by name: the supernet's own names first, then the run's named-subnets files."""
        return resolve(self.supernet, self.subnet_files, name)

    def names(self) -> list[str]:
        """Every name the run knows: the supernet's own, then those of its named-subnets files."""
        own = self.supernet.named_subnets()
        return [*own, *(n for n in self.subnet_files if n not in own)]

    def default_names(self) -> list[str]:
        """What evaluation and export cover unless told (`default_names`)."""
        return default_names(self.supernet, self.subnet_files)


def resolve(net: Supernet, files: dict[str, dict], name: str) -> Subnet:
    """`name` among `net`'s names and those of named-subnets files, or a `UserError` listing them all."""
    if name in files and name not in net.named_subnets():
        return Subnet.from_json(files[name]["subnet"])
    try:
        return net.resolve(name)
    except UserError:
        if not files:
            raise
        raise UserError(
            f"unknown subnet {name!r}; allowed: {net.allowed_names()}, or a name from the run's subnets files: "
            f"{', '.join(files)}"
        ) from None


def default_names(net: Supernet, files: dict[str, dict]) -> list[str]:
    """What evaluation and export cover unless told: every named subnet of `net`, then those of the run's
    named-subnets files it can run (a switchable-BatchNorm network runs only the subnets it was trained with,
    e.g. a retrained subset of a search's subnets)."""
    own = net.named_subnets()
    return [*own, *(n for n in files if n not in own and net.bn_mode != "switchable")]


def open_run(run_dir: str | Path) -> Run:
    """Config, supernet (weights and statistics of the latest finished stage) and named subnets of a run: how
    `dslim.profile`, `dslim.latency`, `dslim.evaluate` and `dslim.export` read one."""
    config = load_config(run_dir)
    layout = RunLayout(run_dir)
    order = stage_order(config)
    artifact = layout.supernet_before(order)
    if artifact is None:
        raise UserError(f"{run_dir} has no finished stage yet (no <stage>/model.safetensors): train it first")
    net, _ = load_supernet(artifact, arch_of(config.model))
    return Run(layout, config, artifact, net, layout.named_subnets(order))
