"""`python -m dslim.import_checkpoint`: the import command, `dslim.cli.import_checkpoint` (also `dslim import`)."""

from dslim.cli.import_checkpoint import main

if __name__ == "__main__":
    main()
