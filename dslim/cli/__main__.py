"""`python -m dslim.cli COMMAND ...`: the `dslim` console script without installing it."""

from dslim.cli import main

main()
