"""`python -m dslim.evaluate`: the `evaluate` command, `dslim.cli.evaluate` (also `dslim evaluate`)."""

from dslim.cli.evaluate import main

if __name__ == "__main__":
    main()
