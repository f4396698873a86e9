"""`python -m dslim.profile`: the `profile` command, `dslim.cli.profile` (also `dslim profile`)."""

from dslim.cli.profile import main

if __name__ == "__main__":
    main()
