"""Reading a run directory: its resolved config and its latest finished stage artifact.

`python -m dslim.train --out-dir D` writes `D/config.json` (`{"config": asdict(Config), "argv": ..., "versions":
...}`) and one `D/<stage>/model.safetensors` per finished stage; evaluation and export start from these.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path

from dslim.config import Config
from dslim.errors import UserError
from dslim.models.base import Supernet
from dslim.stages import ARTIFACT, load_artifact, stage_order


def _convert(hint: object, value: object, where: str) -> object:
    """`value` (as JSON decoded it) turned into the type `hint` describes: dataclasses and tuples rebuilt."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if value is None:
        return None
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise UserError(f"{where} should be an object, not {value!r}")
        return _dataclass(hint, value, where)
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
    hints = typing.get_type_hints(cls)
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
    run_dir = Path(run_dir)
    path = run_dir / "config.json"
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist (give the --out-dir of a dslim.train run)")
    if not path.is_file():
        raise UserError(f"{run_dir} is not a dslim run: {path.name} is missing (written by dslim.train --out-dir)")
    try:
        obj = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is not readable JSON ({e})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("config"), dict):
        raise UserError(f'{path} has no "config" object: it was not written by dslim.train')
    return config_from_json(obj["config"])


def latest_artifact(run_dir: str | Path, config: Config) -> Path:
    """The model of the last finished stage, in pipeline order (a stage is finished when its artifact exists)."""
    run_dir = Path(run_dir)
    order = stage_order(config)
    for stage in reversed(order):
        path = run_dir / stage / ARTIFACT
        if path.is_file():
            return path
    raise UserError(f"{run_dir} has no finished stage yet (no <stage>/{ARTIFACT} for any of {order}): train it first")


@dataclass
class Run:
    """A run directory opened for evaluation or export."""

    dir: Path
    config: Config
    artifact: Path
    supernet: Supernet


def open_run(run_dir: str | Path) -> Run:
    """Config and supernet (weights and every stored subnet's statistics) of the latest finished stage."""
    config = load_config(run_dir)
    artifact = latest_artifact(run_dir, config)
    return Run(Path(run_dir), config, artifact, load_artifact(config, artifact))
