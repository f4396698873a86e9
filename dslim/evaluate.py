"""`python -m dslim.evaluate`: the `evaluate` command, `dslim.cli.evaluate` (also `dslim evaluate`)."""

if __name__ == "__main__":
    from dslim.cli import run

    run("evaluate")
