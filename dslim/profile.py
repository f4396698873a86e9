"""`python -m dslim.profile`: the `profile` command, `dslim.cli.profile` (also `dslim profile`)."""

if __name__ == "__main__":
    from dslim.cli import run

    run("profile")
