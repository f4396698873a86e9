"""`python -m dslim.import_checkpoint KIND PATH --out F.safetensors [--ema]`: an original's checkpoint as a dslim
supernet artifact.

`dsnet`: the released DS-Net supernet (changlin31/DS-Net, mobilenetv1_bn_uniform), so that gate training can start
from it (`python -m dslim.train --recipe dsnet_mbv1 --stages gate --from F.safetensors`).

Files are read with `torch.load(weights_only=True)`: only tensors, containers, plain values and a minimal allow-list
of what each original pickles (DS-Net: its `argparse.Namespace` of training args) are unpickled, never other
objects, so nothing in the file is ever executed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import tyro

from dslim.checkpoint import save_supernet
from dslim.errors import UserError, exits_cleanly


@dataclass(frozen=True)
class ImportCommand:
    kind: tyro.conf.Positional[Literal["dsnet"]]
    """Which project's checkpoint: `dsnet` (changlin31/DS-Net, mobilenetv1_bn_uniform)."""
    path: tyro.conf.Positional[str]
    """The released checkpoint file."""
    out: str
    """Where to write the dslim supernet artifact (`.safetensors`)."""
    ema: bool = False
    """DS-Net: import `state_dict_ema` (the EMA weights) instead of `state_dict`."""


@exits_cleanly
def main(argv: Sequence[str] | None = None) -> None:
    cmd = tyro.cli(ImportCommand, args=argv, description=__doc__)
    if not cmd.out.endswith(".safetensors"):
        raise UserError(f"--out {cmd.out!r} should end in .safetensors")
    from dslim.importers import KINDS

    net, meta = KINDS[cmd.kind].load(cmd.path, ema=cmd.ema)
    try:
        save_supernet(net, cmd.out, stage="import", kind=cmd.kind, **meta)
    except OSError as e:
        raise UserError(f"cannot write --out {cmd.out}: {e.strerror or e}") from None
    print(f"wrote {cmd.out}: {net.arch} with {len(net.named_subnets())} named subnets from {meta['weights']}")


if __name__ == "__main__":
    main()
