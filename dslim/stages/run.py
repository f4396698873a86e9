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

from dslim.config import Config, StagesConfig, stages_config_class, validate_fields
from dslim.errors import UserError
from dslim.io import preprocessing
from dslim.io.artifacts import load_supernet
from dslim.models.base import Supernet
from dslim.models.registry import arch_of
from dslim.stages.layout import RunLayout, stage_order
from dslim.stages.record import read_record
from dslim.subnet import Subnet

# -- reading a recorded config back -------------------------------------------------------------------------------
_KINDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _convert(hint: object, value: object, where: str) -> object:
    """`value` (as JSON or YAML decoded it) turned into the type `hint` describes: dataclasses and tuples rebuilt,
    every leaf checked (a `UserError` naming the field otherwise)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        return _convert(args[0], value, where)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if value is None and len(inner) < len(args):
            return None
        return _convert(inner[0], value, where) if len(inner) == 1 else value
    if value is None:
        raise UserError(f"{where} should not be null")
    if hint is StagesConfig:
        hint = stages_config_class()
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise UserError(f"{where} should be an object, not {json.dumps(value, default=str)}")
        return _dataclass(hint, value, where)  # type: ignore[arg-type]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where} should be a list, not {json.dumps(value, default=str)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise UserError(f"{where} should have {len(args)} entries, not {len(value)}")
        return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is typing.Literal:
        if value not in args or isinstance(value, bool) != isinstance(args[0], bool):
            raise UserError(f"{where} is {json.dumps(value, default=str)}; choose one of {', '.join(map(str, args))}")
        return value
    if hint in _KINDS:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if hint is float and number:
            return float(value)  # type: ignore[arg-type]
        if isinstance(value, hint) and (hint is bool or not isinstance(value, bool)):  # type: ignore[arg-type]
            return value
        raise UserError(f"{where} should be {_KINDS[hint]}, not {json.dumps(value, default=str)}")  # type: ignore[index]
    return value


def _dataclass(cls: type, obj: dict, where: str) -> object:
    hints = typing.get_type_hints(cls, include_extras=True)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(map(str, set(obj) - names))
    if unknown:
        raise UserError(f"{where} has fields this dslim does not know: {unknown} (written by another version?)")
    return cls(**{k: _convert(hints[k], v, f"{where}.{k}") for k, v in obj.items()})


def config_from_json(obj: dict, where: str = "config") -> Config:
    """The `Config` that `dataclasses.asdict` turned into `obj` (missing fields take their defaults), every field
    checked; `where` names it in messages. A record of an earlier dslim's `tensorboard` switch reads as
    `log_with`."""
    if "tensorboard" in obj:
        legacy = _convert(bool, obj["tensorboard"], f"{where}.tensorboard")
        obj = {k: v for k, v in obj.items() if k != "tensorboard"}
        if legacy and "log_with" not in obj:
            obj["log_with"] = ["tensorboard"]
    return _dataclass(Config, obj, where)  # type: ignore[return-value]


def read_config_file(path: str | Path) -> tuple[Config, str | None]:
    """The config a file holds, for `dslim.train --config`: a run's config.json, a model folder's card (its
    `training`), or a config alone; JSON, or YAML (`.yaml`/`.yml`, safe loading: plain values only). Returns the
    config and the recipe the file records (None if it records none)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"--config {path}: no such file (give a run's config.json, a card, or a YAML config)")
    is_yaml = path.suffix.lower() in (".yaml", ".yml")
    if path.stat().st_size > 2**24:
        raise UserError(f"--config {path} holds {path.stat().st_size:,} bytes, far more than any config: not one")
    try:
        text = path.read_text()
        obj = yaml.safe_load(text) if is_yaml else json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError, yaml.YAMLError) as e:
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"--config {path} is not readable {'YAML' if is_yaml else 'JSON'} ({detail})") from None
    if isinstance(obj, dict) and isinstance(obj.get("training"), dict):
        obj = obj["training"]  # an export card
    recipe = None
    if isinstance(obj, dict) and isinstance(obj.get("config"), dict):
        recipe = obj.get("recipe") if isinstance(obj.get("recipe"), str) else None
        obj = obj["config"]  # a run's record
    if not isinstance(obj, dict):
        raise UserError(f"--config {path} holds no config (an object with model, data, stages ...)")
    return config_from_json(obj, f"{path}: config"), recipe


def load_config(run_dir: str | Path) -> Config:
    """The resolved config a training run recorded in `run_dir/config.json`, checked."""
    return _config(run_record(run_dir), RunLayout(run_dir))


def run_record(run_dir: str | Path) -> dict:
    """A run's `config.json` record, checked (`dslim.stages.record`): the resolved config (as JSON), recipe, argv,
    versions."""
    layout = RunLayout(run_dir)
    if not layout.root.is_dir():
        raise UserError(f"run directory {run_dir} does not exist (give the --out-dir of a dslim.train run)")
    if not layout.config.is_file():
        raise UserError(f"{run_dir} is not a dslim run: config.json is missing (written by dslim.train --out-dir)")
    return read_record(layout)


def _config(record: dict, layout: RunLayout) -> Config:
    config = config_from_json(record["config"], f"{layout.config}: config")
    try:
        validate_fields(config)
    except UserError as e:
        raise UserError(f"{layout.config}: {e}") from None
    return config


@dataclass
class Run:
    """A run directory opened for evaluation, export or profiling."""

    layout: RunLayout
    config: Config
    artifact: Path
    supernet: Supernet
    subnet_files: dict[str, dict]
    """Named subnets of the run's `subnets` artifacts (search results, samples)."""
    recipe: str | None = None
    """The recipe the run was trained with, as given to `dslim.train`."""

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


def open_run(run_dir: str | Path, model: str | Path | None = None) -> Run:
    """Config, supernet (weights and statistics of the latest finished stage, or of the artifact `model`: a stage's
    `ema.safetensors`) and named subnets of a run: how `dslim.profile`, `dslim.latency`, `dslim.evaluate` and
    `dslim.export` read one."""
    layout = RunLayout(run_dir)
    record = run_record(run_dir)
    config = _config(record, layout)
    order = stage_order(config)
    artifact = layout.supernet_before(order) if model is None else Path(model)
    if artifact is None:
        raise UserError(f"{run_dir} has no finished stage yet (no <stage>/model.safetensors): train it first")
    net, meta = load_supernet(artifact, arch_of(config.model))
    # evaluated and exported as its weights were trained (a run's own artifacts record its own data settings)
    config = preprocessing.adopt(config, preprocessing.read(meta, artifact))
    recipe = record.get("recipe") if isinstance(record.get("recipe"), str) else None
    return Run(layout, config, artifact, net, layout.named_subnets(order), recipe)
