"""User errors: bad input that the user can fix, reported in one line with exit code 2; and stopping on a signal."""

from __future__ import annotations

import functools
import signal
import sys
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable[..., object])


class UserError(Exception):
    """Something the user asked for is wrong; the message says what and how to fix it."""


class Stopped(Exception):
    """Work stopped on a signal; the message says where, and how to continue."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class Terminated(BaseException):
    """SIGTERM (a scheduler ending the job) outside a training loop, raised where the program is, as Ctrl-C raises
    `KeyboardInterrupt`: files being written are cleaned up on the way out. A `BaseException`, so that no
    `except Exception` swallows it."""

    signum = signal.SIGTERM


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def _out_of_memory(e: BaseException) -> bool:
    """An allocation the machine cannot make (a batch too large for it): PyTorch says so in its own error types."""
    return isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or "can't allocate memory" in str(e)


def signal_name(signum: int) -> str:
    return f"signal {signum} ({signal.Signals(signum).name})"


def exits_cleanly(main: F) -> F:
    """Turn a `UserError` raised by a command into `dslim: error: ...` on stderr and exit code 2 (memory exhausted
    too: a batch too large for the machine), and a stop on Ctrl-C or SIGTERM, wherever it comes, into one line and
    the shell's code for that signal (130, 143).

    Anything else is a bug and keeps its traceback.
    """

    @functools.wraps(main)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            previous = signal.signal(signal.SIGTERM, _terminate)
        except ValueError:  # not the main thread: signals cannot be caught here, leave them alone
            previous = None
        try:
            return main(*args, **kwargs)
        except UserError as e:
            print(f"dslim: error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        except Stopped as e:
            print(f"dslim: {e}", file=sys.stderr)
            raise SystemExit(e.exit_code) from None
        except (MemoryError, RuntimeError) as e:
            if not _out_of_memory(e):
                raise
            reason = " ".join(str(e).split())[:160] or type(e).__name__
            print(f"dslim: error: out of memory ({reason}); lower the batch size", file=sys.stderr)
            raise SystemExit(2) from None
        except (KeyboardInterrupt, Terminated) as e:
            signum = Terminated.signum if isinstance(e, Terminated) else signal.SIGINT
            print(f"dslim: interrupted by {signal_name(signum)}; nothing is left half-written: run the same command "
                  "again to continue", file=sys.stderr)  # fmt: skip
            raise SystemExit(128 + signum) from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    return wrapper  # type: ignore[return-value]
