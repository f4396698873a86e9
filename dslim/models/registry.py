"""Supernet registry: `create_supernet("mobilenet_v2", **kwargs)`, as timm's `create_model`."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING

from dslim.errors import UserError
from dslim.registry import Registry

if TYPE_CHECKING:
    from dslim.config import ModelConfig
    from dslim.models.base import Supernet

ARCHITECTURES: Registry[type] = Registry("architecture", sort_names=True)
_UNLISTED: set[str] = set()


def register(name: str, listed: bool = True) -> Callable[[type], type]:
    """Register a supernet class; `listed=False` for one that is made, not chosen (a converted model)."""
    if not listed:
        _UNLISTED.add(name)
    return ARCHITECTURES.decorator(name)


def names() -> list[str]:
    """The architectures `--model.arch` chooses from."""
    return [n for n in ARCHITECTURES.names() if n not in _UNLISTED]


def supernet_class(name: str) -> type:
    return ARCHITECTURES.get(name)


def create_supernet(name: str, **kwargs: object) -> Supernet:
    """Build a registered supernet by name."""
    return supernet_class(name)(**kwargs)


def arch_of(cfg: ModelConfig) -> str:
    """The architecture a model config builds: `converted` for a model of the user's own (`--model.module`)."""
    return "converted" if cfg.module else cfg.arch


def model_name(cfg: ModelConfig) -> str:
    """How commands name a run's model: the architecture, or the user's `--model.module`."""
    return cfg.module or cfg.arch


def from_config(cfg: ModelConfig) -> Supernet:
    """Build the supernet a run's model config describes."""
    cls = supernet_class(arch_of(cfg))
    if cfg.prune_head and not cfg.module and "prune_head" not in inspect.signature(cls).parameters:
        raise UserError(f"--model.prune-head: {model_name(cfg)} keeps no layer at a fixed width (its classifier's "
                        "input is a channel group already); leave it out")  # fmt: skip
    return cls.from_config(cfg)
