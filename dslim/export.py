"""`python -m dslim.export`: the `export` command, `dslim.cli.export` (also `dslim export`)."""

if __name__ == "__main__":
    from dslim.cli import run

    run("export")
