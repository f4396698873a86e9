"""Bounds on settings' values, declared in their annotations (`Annotated[int, at_least(1)]`) and checked all at once
by `validate_fields` before any work, naming the offending option as the user typed it."""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from dslim.errors import UserError


@dataclass(frozen=True)
class Check:
    """A bound on a field's value: `test(value)` must hold; `says` completes "must be ...". Applied to each entry
    of a tuple."""

    test: Callable[[Any], bool]
    says: str


def at_least(low: float) -> Check:
    return Check(lambda v: v >= low, f"at least {low}")


def in_range(low: float, high: float, *, open_low: bool = False) -> Check:
    bracket = "(" if open_low else "["
    return Check(lambda v: (v > low if open_low else v >= low) and v <= high, f"in {bracket}{low}, {high}]")


FINITE = Check(lambda v: math.isfinite(v), "a finite number")
Positive = Annotated[int, at_least(1)]
NonNegative = Annotated[int, at_least(0)]
Fraction = Annotated[float, in_range(0.0, 1.0)]
NonNegativeFloat = Annotated[float, at_least(0.0), FINITE]


def option_name(path: str) -> str:
    """`stages.supernet.grad_accum` -> `--stages.supernet.grad-accum`, as tyro spells it."""
    return "--" + path.replace("_", "-")


def validate_fields(obj: object, prefix: str = "") -> None:
    """Check every bounded field of a (nested) config; a `UserError` naming the first bad option otherwise."""
    hints = typing.get_type_hints(type(obj), include_extras=True)
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        value, hint, path = getattr(obj, f.name), hints[f.name], f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            validate_fields(value, path + ".")
            continue
        checks = [m for m in getattr(hint, "__metadata__", ()) if isinstance(m, Check)]
        for v in value if isinstance(value, tuple) else (value,):
            for check in checks:
                if v is not None and not check.test(v):
                    raise UserError(f"{option_name(path)} {_show(value)}: must be {check.says}")


def _show(value: object) -> str:
    return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)
