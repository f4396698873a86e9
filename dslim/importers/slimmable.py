"""Slimmable networks (JiahuiYu/slimmable_networks): the released S-MobileNet v1/v2, S-ResNet-50 and US-MobileNet
v1/v2 `.pt` files, onto dslim's `mobilenet_v1`, `mobilenet_v2` and `resnet50` supernets.

The original's layout: `{'model': state_dict}` with keys prefixed `module.` (`latest_checkpoint.pt` adds
`optimizer`, `last_epoch`, `best_val` and `meters`, pickled `utils.meters.ScalarMeter` objects, which are read as
inert placeholders and skipped). `features.0` is the stem, `features.k` the k-th block (`body.j` its layers,
`shortcut.j` a ResNet projection), MobileNet v2's last `features.k` the final 1x1 conv with one plain BatchNorm
shared by every width, `classifier.0` the classifier. Its BatchNorms come in two kinds:

- S-Net (switchable): `bn.{i}.{weight,bias,running_mean,running_var}`, private to width `i` of the app's
  `width_mult_list`;
- US-Net (calibrated): one shared `weight`/`bias` and `bn.{i}.{running_mean,running_var}` for width `i` of the list
  the file was calibrated (or trained) with. The file does not record that list: `--widths` gives it; otherwise
  the app yml's `width_mult_list` is assumed when the count matches it (31 widths 0.25..1.0 for v1, 27 widths
  0.35..1.0 for v2), and its `width_mult_range` when the file holds two (a checkpoint saved during training).

dslim files BatchNorm statistics per subnet, so width `i`'s statistics become the statistics of that width's subnet.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from dslim.errors import UserError
from dslim.importers.common import ImportOptions, no_leftovers, strip_prefix, take
from dslim.models.base import Supernet
from dslim.models.registry import supernet_class
from dslim.models.width import width_name
from dslim.nn import SlimBatchNorm2d, SlimConv2d, SlimLinear

SUMMARY = "JiahuiYu/slimmable_networks' S-MobileNet v1/v2, S-ResNet-50, US-MobileNet v1/v2 `.pt`"
STEM, STEM_BN, CLASSIFIER = "features.0.0.weight", "features.0.1", "classifier.0.weight"
SHUFFLENET_STEM = "head_0.0.weight"  # S-ShuffleNet: one stem per group (`head_{g}`), blocks of `a_{g}`/`b`/`c_{g}`


class ScalarMeter:
    """Stands in for the original's pickled `utils.meters.ScalarMeter` (training-curve caches): the unpickler
    creates it empty and it keeps nothing, so nothing in the file is run or used."""

    def __setstate__(self, state: object) -> None:
        pass


ALLOWED = ((ScalarMeter, "utils.meters.ScalarMeter"),)


def _grid(low: float) -> tuple[float, ...]:
    return tuple(round(low + 0.025 * i, 3) for i in range(round((1.0 - low) / 0.025) + 1))


# The apps' yml defaults (apps/{s,us}_*_train_val.yml): S-Net `width_mult_list`; US-Net `width_mult_range` and
# the `width_mult_list` its released files were calibrated for.
S_WIDTHS = {"mobilenet_v1": (0.25, 0.5, 0.75, 1.0), "mobilenet_v2": (0.35, 0.5, 0.75, 1.0),
            "resnet50": (0.25, 0.5, 0.75, 1.0)}  # fmt: skip
US_RANGE = {"mobilenet_v1": (0.25, 1.0), "mobilenet_v2": (0.35, 1.0)}
FEATURES = (1024, 1280, 2048)  # into the classifier at width 1.0: MobileNet v1, v2, ResNet-50
NAMES = {"mobilenet_v1": "MobileNet v1", "mobilenet_v2": "MobileNet v2", "resnet50": "ResNet-50"}


@dataclass(frozen=True)
class Options(ImportOptions):
    """JiahuiYu/slimmable_networks: S-MobileNet v1/v2, S-ResNet-50, US-MobileNet v1/v2 (`.pt`, latest or best)."""

    widths: tuple[float, ...] = ()
    """The width of each `bn.{i}` in the file, in order (the app yml's `width_mult_list`). Default: the yml's list
    (S-Net; US-Net when the count matches), or its `width_mult_range` for a US-Net file holding two."""


def state_of(ckpt: dict) -> dict[str, torch.Tensor]:
    """The weights: the file's `model` entry (or the file itself, which the original also loads), unprefixed."""
    model = ckpt.get("model")
    return strip_prefix(model if isinstance(model, dict) else ckpt)


def has_layout(state: dict[str, torch.Tensor]) -> bool:
    """The slimmable-networks layout (S-/US-Nets and AutoSlim): a `features.0` stem conv with per-width BatchNorm
    statistics, `classifier.0`."""
    return STEM in state and CLASSIFIER in state and f"{STEM_BN}.bn.0.running_mean" in state


def standard_widest(state: dict[str, torch.Tensor]) -> bool:
    """Whether the file's widest network is the standard width-1.0 one (a 32- or 64-channel stem, 1024, 1280 or 2048
    features into the classifier), as every S-/US-Net's is; AutoSlim's widest layers are searched counts."""
    stem, classifier = state[STEM], state[CLASSIFIER]
    return stem.dim() == 4 and classifier.dim() == 2 and stem.shape[0] in (32, 64) and classifier.shape[1] in FEATURES


def looks_like(ckpt: dict) -> bool:
    """A slimmable-networks S-/US-Net file: their layout, at the standard widths (or their S-ShuffleNet)."""
    state = state_of(ckpt)
    return (has_layout(state) and standard_widest(state)) or (SHUFFLENET_STEM in state and CLASSIFIER in state)


def arch_of(state: dict[str, torch.Tensor], path: str) -> str:
    """The architecture of a slimmable-networks file: ResNet-50 (a 7x7 stem), MobileNet v1 (13 blocks), or an
    inverted-residual net (17 blocks and the last 1x1 conv): MNasNet if a depthwise conv is 5x5, else MobileNet v2."""
    if SHUFFLENET_STEM in state:
        raise UserError(f"{path} is an S-ShuffleNet file: dslim has no slimmable ShuffleNet (grouped 1x1 convs, "
                        "channel shuffles, concatenated shortcuts), so importing it is not supported")  # fmt: skip
    stem = state[STEM]
    if stem.dim() != 4:
        raise UserError(f"{path}: {STEM} has shape {tuple(stem.shape)}, not that of a conv weight")
    if stem.shape[-1] == 7:
        return "resnet50"
    if not any(k.startswith("features.18.") for k in state):
        return "mobilenet_v1"
    kernels = {v.shape[-1] for k, v in state.items() if ".body." in k and v.dim() == 4 and v.shape[1] == 1}
    return "mnasnet" if 5 in kernels else "mobilenet_v2"


def _widths(arch: str, switchable: bool, count: int, given: tuple[float, ...], path: str) -> tuple[tuple, str]:
    """The width of each `bn.{i}` and where that list came from."""
    if given:
        if len(given) != count:
            raise UserError(f"{path} holds BatchNorm statistics for {count} widths; --widths gives {len(given)}")
        if len(set(given)) != len(given) or not all(0 < w <= 1.0 for w in given):
            raise UserError(f"--widths {' '.join(map(str, given))}: widths must be distinct and in (0, 1.0]")
        return tuple(float(w) for w in given), "--widths"
    app = f"apps/{'s' if switchable else 'us'}_{arch}_train_val.yml"
    defaults = S_WIDTHS[arch] if switchable else _grid(US_RANGE[arch][0])
    if len(defaults) == count:
        return defaults, f"the width_mult_list of {app}"
    if not switchable and count == 2:
        return US_RANGE[arch], f"the width_mult_range of {app} (a checkpoint saved during training)"
    raise UserError(
        f"{path} holds BatchNorm statistics for {count} widths, which the file does not name (the default list of "
        f"{app} has {len(defaults)}): give them in order with --widths W1 ... W{count}"
    )


def original_name(name: str, arch: str, blocks: int) -> str:
    """dslim module name -> the original's (`stem.1` -> `features.0.1`, `features.3.4` -> `features.4.body.4`)."""
    head, _, rest = name.partition(".")
    if head == "stem":
        return f"features.0.{rest}"
    if head == "head":
        return f"features.{blocks + 1}.{rest}"
    if head == "classifier":
        return "classifier.0"
    m = re.fullmatch(r"(\d+)\.(.+)", rest)
    assert head == "features" and m, name
    inner = f"body.{m[2]}" if arch == "mobilenet_v1" else m[2]
    return f"features.{int(m[1]) + 1}.{inner}"


def copy_bn(bn: SlimBatchNorm2d, prefix: str, keys: list[str], subnets: list, state: dict, path: str) -> set[str]:
    """Width `i`'s affine (switchable) and statistics into subnet `i`'s slots; a plain BatchNorm (MobileNet v2's
    last) gives the same to every width. Returns the keys used."""
    used: set[str] = set()

    def get(key: str, channels: int) -> torch.Tensor:
        used.add(key)
        return take(state, key, (channels,), path)

    plain = f"{prefix}.running_mean" in state
    if bn.mode != "switchable":
        bn.weight.data.copy_(get(f"{prefix}.weight", bn.num_features))
        bn.bias.data.copy_(get(f"{prefix}.bias", bn.num_features))
    for i, (key, subnet) in enumerate(zip(keys, subnets)):
        c = bn.num_features if bn.group is None else subnet[bn.group]
        src = f"{prefix}." if plain else f"{prefix}.bn.{i}."
        bn.add_subnet(key, c)
        if bn.mode == "switchable":
            bn.affine[key].weight.data.copy_(get(src + "weight", c))
            bn.affine[key].bias.data.copy_(get(src + "bias", c))
        stats = bn.stats[key]
        stats.running_mean.copy_(get(src + "running_mean", c))
        stats.running_var.copy_(get(src + "running_var", c))
        if src + "num_batches_tracked" in state:  # absent from files of PyTorch < 0.4.1
            used.add(src + "num_batches_tracked")
            stats.num_batches_tracked.copy_(take(state, src + "num_batches_tracked", (), path))
    return used


def convert(ckpt: dict, opts: Options) -> tuple[Supernet, dict]:
    """The supernet of a released S-/US-Net file, with every width's BatchNorm statistics, and its metadata."""
    path, state = opts.path, state_of(ckpt)
    arch = arch_of(state, path)
    switchable = f"{STEM_BN}.bn.0.weight" in state
    if arch not in S_WIDTHS:
        raise UserError(f"{path} is an S-/US-Net {arch}, which the original never released (it released "
                        "AutoSlim-MNasNet: import that with the autoslim kind); not supported")  # fmt: skip
    if not switchable and arch == "resnet50":
        raise UserError(f"{path} is a US-Net ResNet-50, which the original never released; dslim reads S-ResNet-50")
    count = len([k for k in state if re.fullmatch(rf"{re.escape(STEM_BN)}\.bn\.\d+\.running_mean", k)])
    widths, source = _widths(arch, switchable, count, opts.widths, path)
    if max(widths) != 1.0:
        raise UserError(f"{path}: the widths {list(widths)} do not include 1.0, the width the file's weights have")
    kwargs: dict = dict(num_classes=state[CLASSIFIER].shape[0], widths=widths)
    if switchable:
        kwargs.update(bn="switchable")
    else:
        kwargs.update(bn="calibrated", width_range=(min(US_RANGE[arch][0], *widths), 1.0))
    net: Supernet = supernet_class(arch)(**kwargs)
    subnets = [net.resolve(width_name(w)) for w in widths]
    keys = [s.key for s in subnets]
    if len(set(keys)) != len(keys):
        raise UserError(f"{path}: two of the widths {list(widths)} give the same channels; check --widths")
    blocks = len(net.features)
    used: set[str] = set()
    for name, m in net.named_modules():
        if isinstance(m, SlimBatchNorm2d):
            used |= copy_bn(m, original_name(name, arch, blocks), keys, subnets, state, path)
        elif isinstance(m, (SlimConv2d, SlimLinear)):
            for pname, p in m.named_parameters(recurse=False):
                key = f"{original_name(name, arch, blocks)}.{pname}"
                p.data.copy_(take(state, key, tuple(p.shape), path))
                used.add(key)
    no_leftovers(state, used, path)
    variant = f"{'S' if switchable else 'US'}-{NAMES[arch]}"
    note = f"{variant}, widths {', '.join(map(str, widths))} (from {source})"
    return net, {"source": str(path), "weights": "model", "variant": variant, "widths": list(widths),
                 "widths_from": source, "note": note}  # fmt: skip
