"""`python -m dslim.train`: the `train` command, `dslim.cli.train` (also `dslim train`)."""

from dslim.cli.train import main

if __name__ == "__main__":
    main()
