"""User errors: bad input that the user can fix, reported in one line with exit code 2."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable[..., object])


class UserError(Exception):
    """Something the user asked for is wrong; the message says what and how to fix it."""


def exits_cleanly(main: F) -> F:
    """Turn a `UserError` raised by a command into `dslim: error: ...` on stderr and exit code 2.

    Anything else is a bug and keeps its traceback.
    """

    @functools.wraps(main)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            return main(*args, **kwargs)
        except UserError as e:
            print(f"dslim: error: {e}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper  # type: ignore[return-value]
