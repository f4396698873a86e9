"""`python -m dslim.train`: the `train` command, `dslim.cli.train` (also `dslim train`)."""

if __name__ == "__main__":
    from dslim.cli import run

    run("train")
