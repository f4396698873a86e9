"""`python -m dslim.export`: the `export` command, `dslim.cli.export` (also `dslim export`)."""

from dslim.cli.export import main

if __name__ == "__main__":
    main()
