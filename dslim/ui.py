"""What users see on the terminal: progress bars on stderr (stdout stays clean for `--json`) and tables."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], description: str, total: int | None, accelerator=None) -> Iterator[T]:  # type: ignore[no-untyped-def]
    """A rich progress bar on stderr, shown by the main process only."""
    from rich.console import Console
    from rich.progress import track

    main = accelerator is None or accelerator.is_main_process
    yield from track(items, description, total=total, console=Console(stderr=True), disable=not main, transient=True)


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """A table on stdout; the first column is left-aligned, the others right-aligned."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(str(v) for v in row))
    Console().print(table)
