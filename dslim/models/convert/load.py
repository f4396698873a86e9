"""`--model.module FILE.py:NAME` and `--model.weights PATH`: the user's model, built and loaded (then converted by
`ConvertedSupernet.from_config`).

Importing the user's file runs the user's code, as timm or torch.hub would; it happens only when a command is given
`--model.module`. Everything dslim writes afterwards (stage artifacts, exported subnets) holds the converted graph
as data and reloads without that file.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import pickle
import sys
from pathlib import Path

import torch
from torch import nn

from dslim.errors import UserError

_IMPORTED: dict[str, object] = {}


def _split(spec: str) -> tuple[str, str]:
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name.isidentifier():
        raise UserError(f"--model.module {spec!r}: give FILE.py:NAME or package.module:NAME (a class or a function)")
    return where, name


def _import(where: str, spec: str) -> object:
    if where in _IMPORTED:
        return _IMPORTED[where]
    is_file = where.endswith(".py") or "/" in where
    try:
        if is_file:
            path = Path(where).expanduser().resolve()
            if not path.is_file():
                raise UserError(f"--model.module {spec!r}: no such file {where}")
            module_spec = importlib.util.spec_from_file_location(f"dslim_user_{path.stem}", path)
            if module_spec is None or module_spec.loader is None:
                raise UserError(f"--model.module {spec!r}: {where} is not a Python file (give FILE.py:NAME)")
            module = importlib.util.module_from_spec(module_spec)
            sys.path.insert(0, str(path.parent))  # the file may import its neighbours
            try:
                sys.modules[module_spec.name] = module
                module_spec.loader.exec_module(module)
            finally:
                sys.path.remove(str(path.parent))
        else:
            module = importlib.import_module(where)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"--model.module {spec!r}: importing {where} raised {type(e).__name__}: {e}") from None
    _IMPORTED[where] = module
    return module


def parse_args(items: tuple[str, ...] | list[str]) -> dict[str, object]:
    """`NAME=VALUE` pairs; a VALUE is JSON if it reads as JSON, else a string."""
    out: dict[str, object] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.isidentifier():
            raise UserError(f"--model.module-args {item!r}: give NAME=VALUE")
        try:
            out[name] = json.loads(value)
        except json.JSONDecodeError:
            out[name] = value
    return out


def build_module(spec: str, args: dict[str, object], num_classes: int | None = None) -> nn.Module:
    """The user's model: `NAME(**args)` from the file or module `spec` names (given `num_classes` if it takes one)."""
    where, name = _split(spec)
    factory = getattr(_import(where, spec), name, None)
    if not callable(factory):
        raise UserError(f"--model.module {spec!r}: {where} has no class or function {name}")
    args = dict(args)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    if num_classes is not None and "num_classes" in params and "num_classes" not in args:
        args["num_classes"] = num_classes
    try:
        model = factory(**args)
    except Exception as e:
        raise UserError(f"--model.module {spec!r}: {name}({', '.join(args)}) raised {type(e).__name__}: {e}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"--model.module {spec!r}: {name} returned a {type(model).__name__}, not a torch nn.Module")
    return model


def read_weights(path: str) -> dict[str, torch.Tensor]:
    """A state dict from safetensors or a torch file (`weights_only=True`; `state_dict`/`model` wrappers and a
    DataParallel `module.` prefix are unwrapped)."""
    if not Path(path).is_file():
        raise UserError(f"--model.weights {path}: no such file")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state: object = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # PyTorch's refusal: many lines, ending in advice to turn weights_only off
        what = "pickled Python objects (a whole model saved with torch.save(model)?)" if "GLOBAL" in str(e) else \
            "data other than tensors"  # fmt: skip
        raise UserError(f"--model.weights {path} holds {what}: dslim reads torch files with weights_only=True, so "
                        "save model.state_dict() (or safetensors) instead") from None  # fmt: skip
    except Exception as e:
        detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(f"--model.weights {path} cannot be read as safetensors or a weights-only torch file: "
                        f"{detail}") from None  # fmt: skip
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"--model.weights {path} holds no state dict (a mapping of names to tensors)")
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state  # type: ignore[return-value]


def load_state(model: nn.Module, path: str, spec: str) -> None:
    """`--model.weights` into the user's model (before it is converted)."""
    state = read_weights(path)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        missing = [k for k in model.state_dict() if k not in state]
        unexpected = [k for k in state if k not in model.state_dict()]
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}" if unexpected else \
            " ".join(str(e).split())[:200]  # fmt: skip
        raise UserError(f"--model.weights {path} does not fit {spec}: {detail}") from None
