"""`python -m dslim.import_checkpoint dsnet PATH.pth.tar --out F.safetensors [--ema]`.

Converts the released DS-Net supernet checkpoint into a dslim supernet artifact, so gate training can start from it
(`python -m dslim.train --recipe dsnet_mbv1 --stages gate --from F.safetensors`). The file is read with
`torch.load(weights_only=True)`: only tensors, containers and an allow-listed `argparse.Namespace` (the pickled
`args`) are unpickled, never arbitrary objects.

DS-Net files one BatchNorm per *width choice of a layer* (`aux_bn.{k}`, affine only on the widest); dslim files
statistics per subnet, so each named subnet receives the statistics of the choice it makes at that layer.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import tyro

from dslim.checkpoint import save_supernet
from dslim.errors import UserError, exits_cleanly
from dslim.models.ds_mobilenet_v1 import CHOICES, DEPTHS, DSMobileNetV1
from dslim.nn import SlimBatchNorm2d


def load_pth(path: str) -> dict:
    """`torch.load` with `weights_only=True` and the one non-tensor type the originals pickle."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"no such checkpoint: {path}") from None
    except Exception as e:
        raise UserError(f"{path} cannot be loaded safely (weights_only=True): {str(e).splitlines()[0]}") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict")
    return obj


def _official_prefix(stage: int, block: int) -> str:
    return f"blocks.{stage}.first_block." if block == 0 else f"blocks.{stage}.residual_blocks.{block - 1}."


def dsnet_key_map(net: DSMobileNetV1) -> dict[str, str]:
    """dslim parameter name -> official name, for every weight (BatchNorms handled separately)."""
    names = {
        "stem.0.weight": "conv_stem.weight",
        "classifier.weight": "classifier.weight",
        "classifier.bias": "classifier.bias",
    }
    for s, depth in enumerate(DEPTHS.values()):
        for b in range(depth):
            ours, theirs = f"stages.{s}.{b}.", _official_prefix(s, b)
            names[ours + "dw.weight"] = theirs + "conv_dw.weight"
            names[ours + "pw.weight"] = theirs + "conv_pw.weight"
            for part, official in (("reduce", "conv_reduce"), ("expand", "conv_expand")):
                for p in ("weight", "bias"):
                    names[f"{ours}se.{part}.{p}"] = f"{theirs}gate.{official}.{p}"
    if hasattr(net.gate_block, "gate"):
        names["stages.3.0.gate.weight"] = "blocks.3.first_block.gate.gate.0.weight"
    return names


def _official_bn(name: str) -> str:
    """dslim BatchNorm module name -> official prefix (`stem.1` -> `bn1`, `stages.s.b.bn1` -> `blocks...bn1`)."""
    if name == "stem.1":
        return "bn1"
    m = re.fullmatch(r"stages\.(\d+)\.(\d+)\.(bn[12])", name)
    assert m, name
    return _official_prefix(int(m[1]), int(m[2])) + m[3]


def import_dsnet(state: dict[str, torch.Tensor], num_classes: int) -> DSMobileNetV1:
    """A `ds_mobilenet_v1` holding the official weights and, per named subnet, the matching BN statistics."""
    net = DSMobileNetV1(num_classes=num_classes)
    params = dict(net.named_parameters())
    for ours, theirs in dsnet_key_map(net).items():
        if theirs not in state:
            raise UserError(f"the checkpoint lacks {theirs}: is it a DS-Net mobilenetv1_bn_uniform supernet?")
        if state[theirs].shape != params[ours].shape:
            raise UserError(f"{theirs} has shape {tuple(state[theirs].shape)}, expected {tuple(params[ours].shape)}")
        params[ours].data.copy_(state[theirs])
    for name, bn in net.named_modules():
        if not isinstance(bn, SlimBatchNorm2d):
            continue
        prefix, choices = _official_bn(name), CHOICES[bn.group]
        widest = f"{prefix}.aux_bn.{len(choices) - 1}."
        bn.weight.data.copy_(state[widest + "weight"])
        bn.bias.data.copy_(state[widest + "bias"])
        for subnet in net.named_subnets().values():
            k = choices.index(subnet[bn.group])
            stats = bn.stats[subnet.key]
            for buf in ("running_mean", "running_var", "num_batches_tracked"):
                getattr(stats, buf).copy_(state[f"{prefix}.aux_bn.{k}.{buf}"])
    return net


@dataclass(frozen=True)
class ImportCommand:
    format: tyro.conf.Positional[Literal["dsnet"]]
    """Which project's checkpoint: `dsnet` (changlin31/DS-Net, mobilenetv1_bn_uniform)."""
    path: tyro.conf.Positional[str]
    """The released `.pth.tar` file."""
    out: str
    """Where to write the dslim supernet artifact (`.safetensors`)."""
    ema: bool = False
    """Import `state_dict_ema` (the EMA weights) instead of `state_dict`."""


@exits_cleanly
def main(argv: Sequence[str] | None = None) -> None:
    cmd = tyro.cli(ImportCommand, args=argv, description=__doc__)
    ckpt = load_pth(cmd.path)
    key = "state_dict_ema" if cmd.ema else "state_dict"
    if key not in ckpt:
        raise UserError(
            f"{cmd.path} has no {key!r} (keys: {sorted(ckpt)}); try {'without' if cmd.ema else 'with'} --ema"
        )
    state = {k.removeprefix("module."): v for k, v in ckpt[key].items()}
    if "classifier.weight" not in state:
        raise UserError(f"{cmd.path}: no classifier.weight in {key}: not a DS-Net supernet checkpoint")
    net = import_dsnet(state, num_classes=state["classifier.weight"].shape[0])
    save_supernet(net, cmd.out, stage="import", source=str(cmd.path), weights=key)
    print(f"wrote {cmd.out}: ds_mobilenet_v1 with {len(net.named_subnets())} named subnets from {key}")


if __name__ == "__main__":
    main()
