"""Importers of the originals' checkpoints: one module per project's format, registered in `KINDS` (a `Registry`).

Each module provides
- `SUMMARY`: one line naming the files it reads (shown by `--help` and in wrong-kind refusals);
- `ALLOWED`: the inert objects its files pickle besides tensors and plain values (`torch.load`'s allow-list);
- `Options`: a frozen dataclass extending `common.ImportOptions` with its own flags (one subcommand each);
- `looks_like(ckpt) -> bool`: whether a checkpoint's keys have this kind's layout;
- `convert(ckpt, opts) -> (supernet, metadata)`: the dslim supernet and what its artifact records.

A new kind (DMCP) is one module and one entry here; the command, the safe loading and the
wrong-kind refusals need no change.
"""

from __future__ import annotations

from types import ModuleType

from dslim.errors import UserError
from dslim.importers import autoslim, blockdrop, dmcp, dsnet, slimmable
from dslim.importers.common import ImportOptions, load_checkpoint
from dslim.registry import Registry

KINDS: Registry[ModuleType] = Registry("checkpoint kind")
KINDS.register("dsnet", dsnet)
KINDS.register("slimmable", slimmable)
KINDS.register("autoslim", autoslim)
KINDS.register("blockdrop", blockdrop)
KINDS.register("dmcp", dmcp)


def read(kind: str, path: str) -> dict:
    """The checkpoint at `path`, read safely, if it has `kind`'s layout; a one-line refusal naming the kind it looks
    like otherwise.

    Every kind's allow-list is used (all are inert placeholders or plain records), so that a file of another kind
    is recognised rather than refused for an object only that kind pickles.
    """
    ckpt = load_checkpoint(path, [entry for _, module in KINDS.items() for entry in module.ALLOWED])
    if KINDS.get(kind).looks_like(ckpt):
        return ckpt
    others = [k for k, m in KINDS.items() if k != kind and m.looks_like(ckpt)]
    if others:
        other = others[0]
        article = "an" if other[0] in "aeiou" else "a"
        raise UserError(
            f"{path} looks like {article} {other} checkpoint ({KINDS.get(other).SUMMARY}), not {kind}: "
            f"import it with `python -m dslim.import_checkpoint {other} {path} --out ...`"
        )
    keys = sorted(map(str, ckpt))
    shown = ", ".join(keys[:6]) + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")
    raise UserError(
        f"{path} is not a {kind} checkpoint ({KINDS.get(kind).SUMMARY}) nor of another kind dslim imports "
        f"({', '.join(KINDS)}); its top-level keys: {shown}"
    )


def import_checkpoint(kind: str, opts: ImportOptions):  # type: ignore[no-untyped-def]
    """`(supernet, metadata)` of an original's checkpoint of `kind`."""
    return KINDS.get(kind).convert(read(kind, opts.path), opts)
