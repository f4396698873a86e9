"""DS-Net (changlin31/DS-Net): the released `slimmable_mbnet_v1_bn_uniform` supernet (`.pth.tar`).

The file pickles its training `args` as an `argparse.Namespace` (allow-listed, nothing else). DS-Net files one
BatchNorm per *width choice of a layer* (`aux_bn.{k}`, affine only on the widest); dslim files statistics per subnet,
so each named subnet receives the statistics of the choice it makes at that layer.
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass

from dslim.errors import UserError
from dslim.importers.common import ImportOptions, no_leftovers, strip_prefix, take
from dslim.io import preprocessing
from dslim.models.ds_mobilenet_v1 import CHOICES, DEPTHS, DSMobileNetV1
from dslim.nn import SlimBatchNorm2d

ARCH = "slimmable_mbnet_v1_bn_uniform"
SUMMARY = "changlin31/DS-Net's released supernet, mobilenetv1_bn_uniform `.pth.tar`"
ALLOWED = (argparse.Namespace,)  # the training args it pickles: a plain record of values
STEM = "conv_stem.weight"


@dataclass(frozen=True)
class Options(ImportOptions):
    """changlin31/DS-Net: the mobilenetv1_bn_uniform supernet (`.pth.tar`)."""

    ema: bool = False
    """Import `state_dict_ema` (the EMA weights) instead of `state_dict`."""


def looks_like(ckpt: dict) -> bool:
    """A DS-Net training checkpoint: a `state_dict` (or its EMA) holding DS-Net's stem and blocks."""
    return any(
        isinstance(ckpt.get(key), dict) and STEM in strip_prefix(ckpt[key]) for key in ("state_dict", "state_dict_ema")
    )


def _official_prefix(stage: int, block: int) -> str:
    return f"blocks.{stage}.first_block." if block == 0 else f"blocks.{stage}.residual_blocks.{block - 1}."


def key_map(net: DSMobileNetV1) -> dict[str, str]:
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


def _convert_state(state: dict, path: str | os.PathLike) -> DSMobileNetV1:
    """A `ds_mobilenet_v1` holding the official weights and, per named subnet, the matching BN statistics."""
    if state.get("classifier.weight") is None or state["classifier.weight"].dim() != 2:
        raise UserError(f"{path} has no 2-D classifier.weight: not a DS-Net supernet checkpoint")
    gate = "blocks.3.first_block.gate.gate.0.weight"
    net = DSMobileNetV1(num_classes=state["classifier.weight"].shape[0], gate_routes=4 if gate in state else 0)
    used: set[str] = set()
    params = dict(net.named_parameters())
    for ours, theirs in key_map(net).items():
        params[ours].data.copy_(take(state, theirs, tuple(params[ours].shape), path))
        used.add(theirs)
    for name, bn in net.named_modules():
        if not isinstance(bn, SlimBatchNorm2d):
            continue
        prefix, choices = _official_bn(name), CHOICES[bn.group]
        widest = f"{prefix}.aux_bn.{len(choices) - 1}."
        for p in ("weight", "bias"):
            getattr(bn, p).data.copy_(take(state, widest + p, (bn.num_features,), path))
            used.add(widest + p)
        for k, c in enumerate(choices):
            for buf in ("running_mean", "running_var", "num_batches_tracked"):
                key = f"{prefix}.aux_bn.{k}.{buf}"
                take(state, key, () if buf == "num_batches_tracked" else (c,), path)
                used.add(key)
        for subnet in net.named_subnets().values():
            k = choices.index(subnet[bn.group])
            stats = bn.stats[subnet.key]
            for buf in ("running_mean", "running_var", "num_batches_tracked"):
                getattr(stats, buf).copy_(state[f"{prefix}.aux_bn.{k}.{buf}"])
    no_leftovers(state, used, path)
    return net


def convert(ckpt: dict, opts: Options) -> tuple[DSMobileNetV1, dict]:
    """The supernet of a released DS-Net file, and metadata for its artifact."""
    path = opts.path
    arch = ckpt.get("arch")
    if arch is not None and arch != ARCH:
        raise UserError(f"{path} holds a {arch!r} model; the dsnet importer reads {ARCH!r} (ds_mobilenet_v1)")
    key = "state_dict_ema" if opts.ema else "state_dict"
    if not isinstance(ckpt.get(key), dict):
        hint = "without" if opts.ema else "with"
        raise UserError(f"{path} has no {key!r} (keys: {sorted(map(str, ckpt))}); try {hint} --ema")
    net = _convert_state(strip_prefix(ckpt[key]), path)
    # changlin31/DS-Net dyn_slim_net.py `_cfg`: ImageNet mean/std, crop_pct 0.875, bicubic
    timm = preprocessing.convention(**preprocessing.IMAGENET, input_size=224, interpolation="bicubic")
    return net, {"source": str(path), "weights": key, "preprocessing": timm}
