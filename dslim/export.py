"""`python -m dslim.export --run D --subnet NAME --out F.safetensors`: one subnet as a standalone model.

The subnet of the latest finished stage's supernet is written with physically sliced weights and its own BatchNorm
statistics; `dslim.load_subnet(F)` rebuilds it with nothing else. With calibrated BatchNorm, a width the artifact
holds no statistics for is calibrated first from training batches (`stages.evaluate.calibrate_batches`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

import tyro

from dslim.errors import UserError, exits_cleanly


@dataclass(frozen=True)
class ExportCommand:
    run: str
    """Run directory (the `--out-dir` of `dslim.train`)."""
    subnet: str
    """Subnet to export: a name (`uniform-3`, `largest`, a name from the run's subnets files such as
    `autoslim-300M`) or a width (`0.75`, any width of a universally slimmable range)."""
    out: str
    """Output file (`.safetensors`)."""


@exits_cleanly
def main(argv: Sequence[str] | None = None) -> None:
    cmd = tyro.cli(ExportCommand, args=sys.argv[1:] if argv is None else list(argv), description=__doc__)
    if not cmd.out.endswith(".safetensors"):
        raise UserError(f"--out {cmd.out!r} should end in .safetensors")
    from dslim.calibration import calibrate_missing
    from dslim.complexity import measure
    from dslim.deploy import extract, save_subnet
    from dslim.stages.layout import open_run

    run = open_run(cmd.run)
    subnet = run.resolve(cmd.subnet)
    calibrate_missing(run.supernet, run.config, {cmd.subnet: subnet})
    size = run.config.model.input_size
    model = extract(run.supernet, subnet)
    try:
        save_subnet(model, subnet, cmd.out, input_size=size)
    except OSError as e:
        raise UserError(f"cannot write {cmd.out}: {e.strerror}") from None
    cost = measure(run.supernet, size, subnet)
    print(f"wrote {cmd.out}: {run.config.model.arch} subnet {cmd.subnet} from {run.artifact.parent.name}, "
          f"{cost.macs / 1e6:,.1f}M MACs, {cost.params / 1e6:,.3f}M params at {size}px")  # fmt: skip


if __name__ == "__main__":
    main()
