"""Supernet registry: `create_supernet("mobilenet_v2", **kwargs)`, as timm's `create_model`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

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
    return supernet_class(cfg.arch).from_config(cfg)
