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


def register(name: str) -> Callable[[type], type]:
    return ARCHITECTURES.decorator(name)


def names() -> list[str]:
    return ARCHITECTURES.names()


def supernet_class(name: str) -> type:
    return ARCHITECTURES.get(name)


def create_supernet(name: str, **kwargs: object) -> Supernet:
    """Build a registered supernet by name."""
    return supernet_class(name)(**kwargs)


def from_config(cfg: ModelConfig) -> Supernet:
    """Build the supernet a run's model config describes."""
    cls = supernet_class(cfg.arch)
    if cfg.prune_head and "prune_head" not in inspect.signature(cls).parameters:
        raise UserError(f"--model.prune-head: {cfg.arch} keeps no layer at a fixed width (its classifier's input is "
                        "a channel group already); leave it out")  # fmt: skip
    return cls.from_config(cfg)
