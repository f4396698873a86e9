"""DMCP (Zx55/dmcp): the stage-1 checkpoints of its DMCP MobileNet v2, ResNet-18 and ResNet-50 (weights and the
Markov chains' alphas), onto dslim's `mobilenet_v2`, `resnet18` and `resnet50` supernets with calibrated BatchNorm.

The original's layout: `{'model', 'optimizer', 'arch_optimizer', 'epoch', 'cur_step', ['best_top1']}`, model keys
prefixed `module.`. MobileNet v2: `conv1`/`bn1` (stem), `blocks.{i}.conv{1,2,3}`/`bn{1,2,3}` (no `conv1` in the
expansion-1 block), `conv_last`/`bn_last`, `fc` (a 1x1 conv with bias). ResNets: `conv1`/`bn1`,
`layer{s}.{j}.conv{k}`/`bn{k}` and `.downsample.{0,1}`, `fc`. Alphas: `alpha1.alpha` (stem); per block
`alpha{k}.alpha` for the output of conv k (MobileNet v2: `alpha1` after the expansion and the depthwise conv,
`alpha2` after the projection; ResNet-18: `alpha1`, `alpha2`; ResNet-50: `alpha1..3`); MobileNet v2 also
`alpha_last.alpha`. An alpha tied by a residual appears under every block that shares it (the same values), and
every alpha layer holds a constant `alpha0` buffer.

dslim's chains are its channel groups, so each group takes the alpha of its layers (tied copies must agree); the
MobileNet v2 supernet has its last 1x1 conv as a group of its own (`prune_head`), whose chain is `alpha_last`.
BatchNorm statistics are left out: DMCP trained with mixed widths, so they belong to no subnet; the calibrated
BatchNorm computes them per subnet (`bn_recalibration`, or evaluation). The artifact carries the chains like a
`dmcp` stage's, so `--stages sample --from F` samples from them.

Refused as not supported: the original's CIFAR-10 MobileNet v2 (built whenever `num_classes` is 10: its third stage
has 24 channels and stride 1, which dslim's mobilenet_v2 does not have). Another max width than the shipped configs'
is read with `--max-width`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch

from dslim.config import in_range
from dslim.errors import UserError
from dslim.importers.common import ImportOptions, no_leftovers, strip_prefix, take
from dslim.methods.dmcp import DmcpRecord
from dslim.methods.dmcp_chains import MarkovChannels, make_chains
from dslim.models.base import Supernet
from dslim.models.complexity import MacsModel
from dslim.models.registry import supernet_class
from dslim.nn import SlimBatchNorm2d, SlimConv2d

SUMMARY = "Zx55/dmcp's stage-1 DMCP MobileNet v2 / ResNet-18 / ResNet-50 checkpoints (weights and alphas)"
ALLOWED = ()
MAX_WIDTH = {"mobilenet_v2": 1.5, "resnet18": 1.0, "resnet50": 1.0}
"""The original's configs' `max_width` (the supernet the file holds)."""


@dataclass(frozen=True)
class Options(ImportOptions):
    """Zx55/dmcp: a DMCP stage-1 checkpoint (weights and alphas) of MobileNet v2 x1.5, ResNet-18 or ResNet-50."""

    min_width: Annotated[float, in_range(0.0, 4.0, open_low=True)] = 0.1
    """The `width[0]` (min width) of the original's config (0.1 in every shipped config)."""
    width_step: Annotated[float, in_range(0.0, 4.0, open_low=True)] = 0.1
    """The `width[2]` (width offset) of the original's config (0.1 in every shipped config)."""
    max_width: Annotated[float, in_range(0.0, 4.0)] = 0.0
    """The `width[1]` (max width) of the original's config; 0: the shipped configs' (MobileNet v2 1.5, ResNets 1.0)."""


def _state(ckpt: dict) -> dict[str, torch.Tensor]:
    model = ckpt.get("model")
    return strip_prefix(model if isinstance(model, dict) else ckpt)


def looks_like(ckpt: dict) -> bool:
    """A DMCP file: a stem `conv1` with the stem's `alpha1.alpha`, and MobileNet v2 `blocks` or ResNet `layer1`."""
    state = _state(ckpt)
    return "alpha1.alpha" in state and "conv1.weight" in state and "fc.weight" in state


def _arch(state: dict[str, torch.Tensor]) -> str:
    if "blocks.0.conv2.weight" in state:
        return "mobilenet_v2"
    return "resnet50" if "layer1.0.conv3.weight" in state else "resnet18"


def _blocks(net: Supernet, arch: str) -> list[str]:
    """The original's prefix of each of dslim's blocks (`features.i`)."""
    if arch == "mobilenet_v2":
        return [f"blocks.{i}" for i in range(len(net.features))]  # type: ignore[arg-type]
    return [f"layer{s + 1}.{j}" for s, n in enumerate(net.depths) for j in range(n)]  # type: ignore[attr-defined]


def _names(net: Supernet, arch: str) -> dict[str, tuple[str, str | None]]:
    """dslim module path -> (the original's module name, the alpha of its output) for every conv, BN and the fc."""
    out: dict[str, tuple[str, str | None]] = {"stem.0": ("conv1", "alpha1"), "stem.1": ("bn1", "alpha1"),
                                              "classifier": ("fc", None)}  # fmt: skip
    if arch == "mobilenet_v2":
        out.update({"head.0": ("conv_last", "alpha_last"), "head.1": ("bn_last", "alpha_last")})
    for i, prefix in enumerate(_blocks(net, arch)):
        block = net.features[i]  # type: ignore[index]
        convs = [n for n, m in block.body.named_children() if isinstance(m, SlimConv2d)]
        norms = [n for n, m in block.body.named_children() if isinstance(m, SlimBatchNorm2d)]
        ks = list(range(4 - len(convs), 4)) if arch == "mobilenet_v2" else list(range(1, len(convs) + 1))
        for conv, norm, k in zip(convs, norms, ks):
            alpha = {1: "alpha1", 2: "alpha1", 3: "alpha2"}[k] if arch == "mobilenet_v2" else f"alpha{k}"
            out[f"features.{i}.body.{conv}"] = (f"{prefix}.conv{k}", f"{prefix}.{alpha}")
            out[f"features.{i}.body.{norm}"] = (f"{prefix}.bn{k}", f"{prefix}.{alpha}")
        if isinstance(getattr(block, "shortcut", None), torch.nn.Sequential):
            last = f"{prefix}.alpha{ks[-1]}"  # ResNets only: MobileNet v2's shortcuts are identities
            out[f"features.{i}.shortcut.0"] = (f"{prefix}.downsample.0", last)
            out[f"features.{i}.shortcut.1"] = (f"{prefix}.downsample.1", last)
    return out


def convert(ckpt: dict, opts: Options) -> tuple[Supernet, dict]:
    """The supernet of a DMCP stage-1 file with its chains' alphas, and its metadata."""
    path, state = opts.path, _state(ckpt)
    arch = _arch(state)
    width = opts.max_width or MAX_WIDTH[arch]
    fc = take(state, "fc.weight", tuple(state["fc.weight"].shape), path)
    if fc.dim() != 4:
        raise UserError(f"{path}: fc.weight has shape {tuple(fc.shape)}, not the original's 1x1 conv")
    if arch == "mobilenet_v2" and fc.shape[0] == 10:
        raise UserError(f"{path} is the original's CIFAR-10 DMCP MobileNet v2 (10 classes: a third stage of 24 "
                        "channels at stride 1), which dslim's mobilenet_v2 does not have: not supported")  # fmt: skip
    head = {"prune_head": True} if arch == "mobilenet_v2" else {}  # the original prunes it by `alpha_last`
    net: Supernet = supernet_class(arch)(
        num_classes=fc.shape[0], max_width=width, widths=(width,), bn="calibrated", **head
    )
    stem = take(state, "conv1.weight", tuple(state["conv1.weight"].shape), path)
    if stem.shape[0] != net.groups["stem"].max:
        raise UserError(f"{path}: a stem of {stem.shape[0]} channels, not the {net.groups['stem'].max} of {arch} at "
                        f"max width {width:g}: give the original config's width[1] with --max-width")  # fmt: skip
    used = {k for k in state if k.endswith((".alpha0", "running_mean", "running_var", "num_batches_tracked"))}
    alphas: dict[str, list[str]] = {}
    modules = dict(net.named_modules())
    for name, (orig, alpha) in _names(net, arch).items():
        m = modules[name]
        for pname, p in m.named_parameters(recurse=False):
            key = f"{orig}.{pname}"
            shape = (*p.shape, 1, 1) if name == "classifier" and pname == "weight" else tuple(p.shape)
            p.data.copy_(take(state, key, shape, path).reshape(p.shape))
            used.add(key)
        group = m.group if isinstance(m, SlimBatchNorm2d) else None
        if group is not None and alpha is not None:
            alphas.setdefault(group, []).append(f"{alpha}.alpha")
    chains = MarkovChannels(make_chains(net, opts.min_width, width, opts.width_step))
    values = {}
    for c in chains.chains:
        present = [k for k in dict.fromkeys(alphas.get(c.group, [])) if k in state]
        if not present:
            raise UserError(f"{path} holds no alpha for {arch}'s channel group {c.group!r} (expected one of "
                            f"{', '.join(dict.fromkeys(alphas.get(c.group, []))) or 'none'})")  # fmt: skip
        first = take(state, present[0], (c.bins,), path)
        for key in present:
            if not torch.equal(take(state, key, (c.bins,), path), first):
                raise UserError(f"{path}: {key} and {present[0]} are tied by a residual but differ")
            used.add(key)
        values[c.group] = first
    no_leftovers(state, used, path)
    with torch.no_grad():
        chains.alpha.copy_(torch.cat([values[c.group].float() for c in chains.chains]))
    with torch.no_grad():
        expected = float(MacsModel(net, 224).macs(chains.expected_channels()))
    note = f"DMCP {arch} x{width:g}, epoch {ckpt.get('epoch', '?')}, expected {expected / 1e6:,.1f}M MACs at 224px"
    record = DmcpRecord(0.0, expected, chains)  # no target: the sample stage asks for one
    return net, {"source": str(path), "weights": "model", "dmcp": record.to_json(), "note": note}
