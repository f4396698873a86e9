"""Every command: parse the command line, call the library, print. No command imports another, and nothing outside
this package imports one.

Each command is a module here with a `main(argv=None)`; `python -m dslim.train` (and `evaluate`, `export`,
`profile`, `latency`, `import_checkpoint`) run them through one-line aliases in `dslim/`, and the `dslim` console
script (`main` below) through `dslim train|evaluate|export|profile|latency|import ...`.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from dslim.errors import exits_cleanly
from dslim.registry import Registry

COMMANDS: Registry[str] = Registry("command")
"""Command name -> its module (imported only when that command runs)."""
COMMANDS.register("train", "dslim.cli.train")
COMMANDS.register("evaluate", "dslim.cli.evaluate")
COMMANDS.register("export", "dslim.cli.export")
COMMANDS.register("profile", "dslim.cli.profile")
COMMANDS.register("latency", "dslim.cli.latency")
COMMANDS.register("import", "dslim.cli.import_checkpoint")

USAGE = f"usage: dslim {{{','.join(COMMANDS.names())}}} ...   (dslim COMMAND --help for a command's options)"


@exits_cleanly
def main(argv: Sequence[str] | None = None) -> None:
    """`dslim COMMAND [options]`: run COMMAND as `python -m dslim.<module>` would."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        raise SystemExit(0 if args else 2)
    module = importlib.import_module(COMMANDS.get(args[0]))
    sys.argv = [f"dslim {args[0]}", *args[1:]]  # what the command parses, and its name in --help
    module.main()
