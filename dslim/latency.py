"""`python -m dslim.latency`: the `latency` command, `dslim.cli.latency` (also `dslim latency`)."""

from dslim.cli.latency import main

if __name__ == "__main__":
    main()
