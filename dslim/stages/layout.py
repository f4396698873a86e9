"""The run directory: where every file of a run lives, and reading a run back (config, artifacts, named subnets).

D/config.json                {"config": asdict(Config), "recipe", "argv", "versions", "history"}
D/metrics.jsonl              one JSON object per logged step, epoch and evaluation, all stages
D/<stage>/model.safetensors  a `supernet` artifact: written last and atomically, it marks the stage done
D/<stage>/subnets.json       a `subnets` artifact (named subnets)
D/<stage>/state/ckpt-<step>/ a training stage's resumable state
D/eval.json, D/pareto.png    the `report` (the evaluate stage)
D/<stage>/done.json          an `export` stage's marker, after its standalone models in D/<stage>/
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import types
import typing
from dataclasses import dataclass
from pathlib import Path

from dslim.checkpoint import load_supernet
from dslim.config import Config, StagesConfig, stages_config_class
from dslim.errors import UserError
from dslim.io import is_temporary
from dslim.models.base import Supernet
from dslim.models.registry import arch_of
from dslim.stages import registry
from dslim.subnet import Subnet


class RunLayout:
    """Paths of one run directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.config = self.root / "config.json"
        self.metrics = self.root / "metrics.jsonl"
        self.report = self.root / "eval.json"
        self.pareto = self.root / "pareto.png"

    def dir(self, stage: str) -> Path:
        return self.root / stage

    def state(self, stage: str) -> Path:
        return self.dir(stage) / "state"

    def path(self, stage: str, kind: str) -> Path:
        """Where `stage` writes an artifact of `kind`."""
        return {
            "supernet": self.dir(stage) / "model.safetensors",
            "subnets": self.dir(stage) / "subnets.json",
            "report": self.report,
            "export": self.dir(stage) / "done.json",
        }[kind]

    def marker(self, stage: str) -> Path:
        """The file whose existence means `stage` is finished."""
        return self.path(stage, registry.get(stage).writes[0])

    def finished(self, stage: str) -> bool:
        return self.marker(stage).exists()

    def started(self, stage: str) -> bool:
        return self.finished(stage) or self.dir(stage).exists()

    def sweep(self) -> None:
        """Remove what an interrupted write left behind (temporary files, unfinished checkpoint folders)."""
        if not self.root.is_dir():
            return
        for path in sorted(self.root.rglob(".*"), reverse=True):
            if is_temporary(path):
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)

    def supernet_before(self, order: list[str], stage: str | None = None) -> Path | None:
        """The `supernet` artifact of the nearest finished stage before `stage` (None: the last one) in `order`."""
        earlier = order if stage is None else order[: order.index(stage)]
        for name in reversed(earlier):
            if "supernet" in registry.get(name).writes and self.path(name, "supernet").is_file():
                return self.path(name, "supernet")
        return None

    def named_subnets(self, order: list[str]) -> dict[str, dict]:
        """Every finished stage's named subnets, in pipeline order (a later stage's name wins)."""
        found: dict[str, dict] = {}
        for name in order:
            if "subnets" in registry.get(name).writes and self.path(name, "subnets").is_file():
                found.update(read_subnets(self.path(name, "subnets")))
        return found


def read_subnets(path: Path) -> dict[str, dict]:
    """A named-subnets file, checked: `{name: {"subnet": Subnet JSON, "macs": int, "params": int, ...}}`."""
    try:
        obj = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is not readable JSON ({e})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path} should map subnet names to entries")
    for name, entry in obj.items():
        if not isinstance(entry, dict):
            raise UserError(f"{path}: entry {name!r} should be an object with a `subnet`")
        Subnet.from_json(entry.get("subnet"), f"{path}: {name!r}")
    return obj


def stage_order(config: Config) -> list[str]:
    """The recipe's pipeline, then every other registered stage (selectable with `--stages`)."""
    return list(config.pipeline) + [s for s in registry.names() if s not in config.pipeline]


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
    """Config, supernet (weights and statistics of the latest finished stage) and named subnets of a run."""
    config = load_config(run_dir)
    layout = RunLayout(run_dir)
    order = stage_order(config)
    artifact = layout.supernet_before(order)
    if artifact is None:
        raise UserError(f"{run_dir} has no finished stage yet (no <stage>/model.safetensors): train it first")
    net, _ = load_supernet(artifact, arch_of(config.model))
    return Run(layout, config, artifact, net, layout.named_subnets(order))
