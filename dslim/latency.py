"""`python -m dslim.latency`: the `latency` command, `dslim.cli.latency` (also `dslim latency`)."""

if __name__ == "__main__":
    from dslim.cli import run

    run("latency")
