"""One small registry type: names to specs, for architectures, stages, stage settings, checkpoint kinds and commands.

A registry holds what is registered under each name and refuses an unknown name with one `UserError` listing the
names it knows, so every "unknown ..." message reads alike. It holds specs only (a class, a module, a dataclass),
never the machinery that uses them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from dslim.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names (in registration order) to specs of one `kind` ("architecture", "stage", ...)."""

    def __init__(self, kind: str, *, sort_names: bool = False) -> None:
        self.kind = kind
        self.sort_names = sort_names
        """List names sorted (architectures), not in registration order (stages: it is a pipeline's order)."""
        self._specs: dict[str, T] = {}

    def register(self, name: str, spec: T) -> T:
        self._specs[name] = spec
        return spec

    def decorator(self, name: str) -> Callable[[T], T]:
        """`@registry.decorator(name)` registers what it decorates."""
        return lambda spec: self.register(name, spec)

    def get(self, name: str) -> T:
        if name not in self._specs:
            raise UserError(f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}")
        return self._specs[name]

    def names(self) -> list[str]:
        return sorted(self._specs) if self.sort_names else list(self._specs)

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self) -> list[tuple[str, T]]:
        return [(name, self._specs[name]) for name in self.names()]
