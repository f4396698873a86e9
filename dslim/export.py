"""`python -m dslim.export --run D (--subnet NAME | --channels FILE) [--out F.safetensors] [--channels-out C]`.

The subnet of the latest finished stage's supernet is written with physically sliced weights and its own BatchNorm
statistics; `dslim.load_subnet(F)` rebuilds it with nothing else. With calibrated BatchNorm, a width the artifact
holds no statistics for is calibrated first from training batches (`stages.evaluate.calibrate_batches`).

The subnet is a name (`--subnet`) or a channel configuration (`--channels`: dslim subnet `.json` or mmrazor
channel-config `.yaml`). `--channels-out` writes the subnet's channel configuration: mmrazor 0.x YAML (mmcls layer
names for MobileNetV2 and ResNets) for `.yaml`, dslim's subnet JSON for `.json`; it needs no statistics, so it also
works on its own, without `--out`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import tyro

from dslim.errors import UserError, exits_cleanly


@dataclass(frozen=True)
class ExportCommand:
    run: str
    """Run directory (the `--out-dir` of `dslim.train`)."""
    subnet: str | None = None
    """Subnet to export: a name (`uniform-3`, `largest`, a name from the run's subnets files such as
    `autoslim-300M`) or a width (`0.75`, any width of a universally slimmable range)."""
    channels: str | None = None
    """Or a channel-configuration file naming the subnet (dslim subnet `.json`, mmrazor channel-config `.yaml`)."""
    out: str | None = None
    """Output model file (`.safetensors`)."""
    channels_out: str | None = None
    """Also (or only) write the subnet's channel configuration here: mmrazor YAML (`.yaml`) or dslim JSON
    (`.json`)."""


@exits_cleanly
def main(argv: Sequence[str] | None = None) -> None:
    cmd = tyro.cli(ExportCommand, args=sys.argv[1:] if argv is None else list(argv), description=__doc__)
    if (cmd.subnet is None) == (cmd.channels is None):
        raise UserError("give the subnet to export: --subnet NAME or --channels FILE (one of them)")
    if cmd.out is None and cmd.channels_out is None:
        raise UserError("give --out F.safetensors (the model) and/or --channels-out F.yaml (its channel config)")
    if cmd.out is not None and not cmd.out.endswith(".safetensors"):
        raise UserError(f"--out {cmd.out!r} should end in .safetensors")
    from dslim.calibration import calibrate_missing
    from dslim.channels import read_channels, write_channels
    from dslim.complexity import measure
    from dslim.deploy import extract, save_subnet
    from dslim.stages.layout import open_run

    run = open_run(cmd.run)
    if cmd.channels is not None:
        name, subnet = Path(cmd.channels).stem, read_channels(cmd.channels, run.supernet)
    else:
        name, subnet = cmd.subnet, run.resolve(cmd.subnet)  # type: ignore[assignment, arg-type]
    size = run.config.model.input_size
    cost = measure(run.supernet, size, subnet)
    what = f"{run.config.model.arch} subnet {name}, {cost.macs / 1e6:,.1f}M MACs, {cost.params / 1e6:,.3f}M params"
    if cmd.channels_out is not None:
        write_channels(cmd.channels_out, run.supernet, subnet)
        print(f"wrote {cmd.channels_out}: channel configuration of {what}")
    if cmd.out is not None:
        calibrate_missing(run.supernet, run.config, {name: subnet})
        model = extract(run.supernet, subnet)
        try:
            save_subnet(model, subnet, cmd.out, input_size=size)
        except OSError as e:
            raise UserError(f"cannot write {cmd.out}: {e.strerror}") from None
        print(f"wrote {cmd.out}: {what} from {run.artifact.parent.name} at {size}px")


if __name__ == "__main__":
    main()
