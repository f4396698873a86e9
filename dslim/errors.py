"""User errors: bad input that the user can fix, reported in one line with exit code 2."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable[..., object])


class UserError(Exception):
    """Something the user asked for is wrong; the message says what and how to fix it."""


class Stopped(Exception):
    """Work stopped on a signal after saving where it was; the message says how to continue."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


def exits_cleanly(main: F) -> F:
    """Turn a `UserError` raised by a command into `dslim: error: ...` on stderr and exit code 2, and a stop on
    Ctrl-C or SIGTERM into one line and the shell's code for that signal (130, 143).

    Anything else is a bug and keeps its traceback.
    """

    @functools.wraps(main)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            return main(*args, **kwargs)
        except UserError as e:
            print(f"dslim: error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        except Stopped as e:
            print(f"dslim: {e}", file=sys.stderr)
            raise SystemExit(e.exit_code) from None
        except KeyboardInterrupt:
            print("dslim: interrupted; running the same command again resumes from the last checkpoint",
                  file=sys.stderr)  # fmt: skip
            raise SystemExit(130) from None

    return wrapper  # type: ignore[return-value]
