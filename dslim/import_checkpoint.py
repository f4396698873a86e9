"""`python -m dslim.import_checkpoint`: the import command, `dslim.cli.import_checkpoint` (also `dslim import`)."""

if __name__ == "__main__":
    from dslim.cli import run

    run("import")
