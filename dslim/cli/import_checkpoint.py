"""`python -m dslim.import_checkpoint KIND PATH --out F.safetensors [options of KIND]`: an original's checkpoint as
a dslim supernet artifact, from which any stage can start (`python -m dslim.train ... --from F.safetensors`).

Kinds (`dslim.importers.KINDS`, one module each): `dsnet` (changlin31/DS-Net's mobilenetv1_bn_uniform supernet,
`--ema` for its EMA weights), `slimmable` (JiahuiYu/slimmable_networks' S-MobileNet v1/v2, S-ResNet-50 and
US-MobileNet v1/v2, with the BatchNorm statistics of every width the file holds; `--widths` names a US-Net file's
widths when they are not the app's defaults), `autoslim` (the same project's AutoSlim-MobileNet v1/v2 and
AutoSlim-ResNet-50, each searched configuration a named subnet, `autoslim-305M` by default, or `--names`) and
`blockdrop` (Tushar-N/blockdrop's pretrained base ResNets and BlockDrop agent/resnet `.t7` files onto
`cifar_resnet32`/`cifar_resnet110`/`resnet101` with its policy network; `--base` gives an agent-only file its base)
and `dmcp` (Zx55/dmcp's stage-1 DMCP MobileNet v2 / ResNet-18 / ResNet-50 checkpoints: weights and the Markov
chains' alphas, which `--stages sample --from F` samples from).

Files are read with `torch.load(weights_only=True)`: only tensors, containers, plain values and a minimal allow-list
of what the originals pickle (DS-Net's `argparse.Namespace` of training args; the slimmable networks' meters, read
as inert placeholders) are unpickled, in the zip or the legacy serialization (BlockDrop's `.t7`), never other
objects, so nothing in the file is ever executed. A file of another kind is refused with the kind it looks like.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import tyro

from dslim.errors import UserError, exits_cleanly
from dslim.importers import KINDS, import_checkpoint


@exits_cleanly
def main(argv: Sequence[str] | None = None) -> None:
    commands = {kind: module.Options for kind, module in KINDS.items()}
    args = sys.argv[1:] if argv is None else list(argv)
    opts = tyro.extras.subcommand_cli_from_dict(
        commands,
        prog="python -m dslim.import_checkpoint",
        args=args,
        description=__doc__,  # type: ignore[arg-type]
    )
    kind = next(k for k, cls in commands.items() if type(opts) is cls)
    if not opts.out.endswith(".safetensors"):
        raise UserError(f"--out {opts.out!r} should end in .safetensors")
    from dslim.io.artifacts import save_supernet

    net, meta = import_checkpoint(kind, opts)
    try:
        save_supernet(net, opts.out, stage="import", kind=kind, **meta)
    except OSError as e:
        raise UserError(f"cannot write --out {opts.out}: {e.strerror or e}") from None
    note = f" ({meta['note']})" if "note" in meta else ""
    print(f"wrote {opts.out}: {net.arch} with {len(net.named_subnets())} named subnets from {meta['weights']}{note}")


if __name__ == "__main__":
    main()
