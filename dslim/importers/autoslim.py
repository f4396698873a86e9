"""AutoSlim (JiahuiYu/slimmable_networks): the released AutoSlim-MobileNet v1/v2, AutoSlim-MNasNet and
AutoSlim-ResNet-50 `.pt` files, with their searched channel configurations, onto dslim's AutoSlim supernets.

The original ran its searched configurations as one slimmable network (the app yml's `channel_num_list`, one list
per "width" `i`): the layout of the slimmable networks' files (`{'model': state_dict}`, `module.` prefix,
`features.0` stem, `features.k` blocks, MobileNet v2's last 1x1 conv in the last `features.k`, `classifier.0`),
every BatchNorm switchable (`bn.{i}`: affine and statistics of configuration `i`, MobileNet v2's last one too), every
weight as wide as the widest configuration in that layer. `bn.{i}` holds exactly configuration `i`'s output
channels of its layer, so the file itself gives every configuration; a layer whose configurations disagree with
the layers tied to it (by a residual, or a depthwise conv and its input) is refused.

dslim's counterpart is what its `retrain` stage makes on the `autoslim_*` recipes' supernets (MobileNet v1/v2 and
MNasNet at width 1.5, ResNet-50 at 1.0): switchable BatchNorm and no named subnets but these, so `evaluate`,
`export` and `profile` resolve them by name (`autoslim-305M`: its MACs at 224x224, or `--names`). The file's
weights fill the front of each supernet weight, which slices from the front; the rest, which no named subnet runs,
is zero. Where the configurations prune MobileNet v2's or MNasNet's last 1x1 conv (AutoSlim-MNasNet's do), the
supernet gets its `head` group (`prune_head`).

The original derives its structure from the configurations (a residual where a block's input and output widths
agree in every configuration, an expansion conv where its width differs from the input's, a projection shortcut
where a ResNet block's widths differ); dslim's supernets fix it per architecture. A file whose structure differs
is refused, saying which block and what dslim does not support.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from dslim.errors import UserError
from dslim.importers.common import ImportOptions, no_leftovers
from dslim.importers.slimmable import (
    STEM_BN,
    arch_of,
    copy_bn,
    has_layout,
    original_name,
    standard_widest,
    state_of,
)
from dslim.models.base import Supernet
from dslim.models.complexity import measure
from dslim.models.registry import supernet_class
from dslim.nn import SlimBatchNorm2d, SlimConv2d, SlimLinear
from dslim.subnet import Subnet

SUMMARY = "JiahuiYu/slimmable_networks' AutoSlim-MobileNet v1/v2, AutoSlim-MNasNet, AutoSlim-ResNet-50 `.pt`"
ALLOWED = ()
# the width of dslim's AutoSlim supernet of each architecture (recipes autoslim_mbv1, autoslim_mbv2, autoslim_resnet50;
# MNasNet as MobileNet v2, which holds every AutoSlim-MNasNet configuration exactly at its widest)
MAX_WIDTH = {"mobilenet_v1": 1.5, "mobilenet_v2": 1.5, "mnasnet": 1.5, "resnet50": 1.0}
NAMES = {"mobilenet_v1": "AutoSlim-MobileNet v1", "mobilenet_v2": "AutoSlim-MobileNet v2",
         "mnasnet": "AutoSlim-MNasNet", "resnet50": "AutoSlim-ResNet-50"}  # fmt: skip


@dataclass(frozen=True)
class Options(ImportOptions):
    """JiahuiYu/slimmable_networks: AutoSlim-MobileNet v1/v2, -MNasNet, -ResNet-50 (`.pt`) and their configurations."""

    names: tuple[str, ...] = ()
    """A name for each configuration, in the file's order (the yml's `channel_num_list`). Default: `autoslim-<M>M`,
    its MACs (millions) at 224x224."""


def looks_like(ckpt: dict) -> bool:
    """The slimmable networks' layout with switchable BatchNorm, at searched (not the standard) widths."""
    state = state_of(ckpt)
    return has_layout(state) and f"{STEM_BN}.bn.0.weight" in state and not standard_widest(state)


def configurations(net: Supernet, state: dict[str, torch.Tensor], count: int, path: str) -> list[Subnet]:
    """Each configuration `i` as a subnet of `net`: every BatchNorm's `bn.{i}` size gives its group's channels."""
    found: list[dict[str, tuple[int, str]]] = [{} for _ in range(count)]
    blocks = len(net.features)  # type: ignore[arg-type]
    for name, bn in net.named_modules():
        if not isinstance(bn, SlimBatchNorm2d):
            continue
        prefix = original_name(name, net.arch, blocks)
        for i in range(count):
            key = f"{prefix}.bn.{i}.running_mean"
            if key not in state:
                raise UserError(f"{path} lacks {key}: not an {NAMES[net.arch]} file of {count} configurations")
            c = state[key].shape[0]
            if bn.group is None:
                if c != bn.num_features:
                    raise UserError(f"{path}: {key} has {c} channels, but dslim's {net.arch} keeps this layer at "
                                    f"{bn.num_features} in every subnet: pruning it is not supported")  # fmt: skip
                continue
            other, where = found[i].setdefault(bn.group, (c, prefix))
            if other != c:
                raise UserError(
                    f"{path}: configuration {i} gives {prefix} {c} channels but {where} {other}, so the original "
                    f"runs without the residual that ties them; dslim's {net.arch} ties the layers of a stage "
                    "(a stage without residuals is not supported)"
                )
    subnets = []
    for i, given in enumerate(found):
        subnet = Subnet.of({g: given[g][0] for g in net.groups})
        try:
            net.check(subnet)
        except UserError as e:
            where = f"dslim's {net.arch} x{MAX_WIDTH[net.arch]}"
            raise UserError(f"{path}: configuration {i} does not fit {where}: {e}") from None
        subnets.append(subnet)
    _check_residuals(net, subnets, path)
    return subnets


def _check_residuals(net: Supernet, subnets: list[Subnet], path: str) -> None:
    """The original adds an inverted-residual block's residual wherever its input and output widths agree in every
    configuration; dslim, only inside a stage. A file whose configurations tie a stage change would differ."""
    for i, (g_in, _, g_out, stride, *_) in enumerate(getattr(net, "plan", ())):
        if stride == 1 and g_in != g_out and all(s[g_in] == s[g_out] for s in subnets):
            raise UserError(f"{path}: block {i} has as many channels in as out in every configuration, so the "
                            f"original adds a residual there; dslim's {net.arch} has none between stages (a "
                            "residual across a stage change is not supported)")  # fmt: skip


def _check_layers(net: Supernet, state: dict[str, torch.Tensor], path: str) -> None:
    """Each block of the file has the convs dslim's block has: the original leaves out an inverted-residual block's
    expansion where its width equals the input's in every configuration, and gives a ResNet block a projection
    shortcut where its input and output widths differ in one."""
    for i, block in enumerate(net.features):  # type: ignore[arg-type]
        prefix = f"features.{i + 1}"
        if hasattr(block, "residual"):  # inverted residual: the expansion, if any, is its first conv
            has, found, what = block.body[0].out_group != block.body[0].in_group, f"{prefix}.body.6.weight", "expansion"
        elif hasattr(block, "shortcut"):
            has, found = isinstance(block.shortcut, torch.nn.Sequential), f"{prefix}.shortcut.0.weight"
            what = "projection shortcut"
        else:
            continue
        if has != (found in state):
            raise UserError(f"{path}: block {i} {'lacks' if has else 'has'} a {what} conv in the file, which "
                            f"dslim's {net.arch} {'has' if has else 'does not have'} there (the original derives it "
                            "from the configurations' widths): not supported")  # fmt: skip


def _prunes_fixed_layer(net: Supernet, state: dict[str, torch.Tensor], count: int) -> bool:
    """Whether the configurations give a layer `net` keeps at one width (no group) other widths."""
    blocks = len(net.features)  # type: ignore[arg-type]
    for name, bn in net.named_modules():
        if isinstance(bn, SlimBatchNorm2d) and bn.group is None:
            keys = [f"{original_name(name, net.arch, blocks)}.bn.{i}.running_mean" for i in range(count)]
            if any(k in state and state[k].shape[0] != bn.num_features for k in keys):
                return True
    return False


def _fill(param: torch.Tensor, value: torch.Tensor, key: str, path: str) -> None:
    """`value` into the front of `param` (zeros elsewhere): supernet weights are sliced from the front."""
    if value.dim() != param.dim() or any(v > p for v, p in zip(value.shape, param.shape)):
        raise UserError(f"{path}: {key} has shape {tuple(value.shape)}, wider than dslim's {tuple(param.shape)}: "
                        "configurations wider than dslim's AutoSlim supernet are not supported")  # fmt: skip
    param.data.zero_()
    param.data[tuple(slice(0, n) for n in value.shape)] = value


def convert(ckpt: dict, opts: Options) -> tuple[Supernet, dict]:
    """dslim's AutoSlim supernet holding the file's weights, its configurations named, and metadata."""
    path, state = opts.path, state_of(ckpt)
    arch = arch_of(state, path)
    count = len([k for k in state if re.fullmatch(rf"{re.escape(STEM_BN)}\.bn\.\d+\.running_mean", k)])
    if opts.names and len(opts.names) != count:
        raise UserError(f"{path} holds {count} configurations; --names gives {len(opts.names)}")
    classes = state["classifier.0.weight"].shape[0]

    def supernet(**kw: bool) -> Supernet:
        cls = supernet_class(arch)
        return cls(num_classes=classes, max_width=MAX_WIDTH[arch], widths=(), width_range=None, bn="switchable", **kw)

    net = supernet()
    if "prune_head" in net.arch_kwargs and _prunes_fixed_layer(net, state, count):
        net = supernet(prune_head=True)
    _check_layers(net, state, path)
    subnets = configurations(net, state, count, path)
    if len(set(subnets)) != count:
        raise UserError(f"{path}: two of its {count} configurations have the same channels")
    net.name_subnets({f"configuration-{i}": s for i, s in enumerate(subnets)})  # their BatchNorms, to measure them
    names = list(opts.names) or [f"autoslim-{round(measure(net, 224, s).macs / 1e6)}M" for s in subnets]
    if len(set(names)) != count:
        raise UserError(f"{path}: configurations would share a name ({', '.join(names)}); give --names")
    net.extra_names = dict(zip(names, subnets))  # BatchNorm state is filed by subnet, not by name: nothing moves
    keys, blocks, used = [s.key for s in subnets], len(net.features), set()  # type: ignore[arg-type]
    for name, m in net.named_modules():
        if isinstance(m, SlimBatchNorm2d):
            used |= copy_bn(m, original_name(name, arch, blocks), keys, subnets, state, path)
        elif isinstance(m, (SlimConv2d, SlimLinear)):
            for pname, p in m.named_parameters(recurse=False):
                key = f"{original_name(name, arch, blocks)}.{pname}"
                if key not in state:
                    raise UserError(f"{path} lacks {key}: not an {NAMES[arch]} file (or another architecture)")
                _fill(p, state[key], key, path)
                used.add(key)
    no_leftovers(state, used, path)
    configs = {n: dict(s.items()) for n, s in zip(names, subnets)}
    note = f"{NAMES[arch]}, configurations {', '.join(names)}"
    return net, {"source": str(path), "weights": "model", "variant": NAMES[arch], "configurations": configs,
                 "note": note}  # fmt: skip
