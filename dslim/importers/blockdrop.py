"""BlockDrop (Tushar-N/blockdrop): its base ResNets and its policy networks ("agents"), `.t7` files of PyTorch 0.3,
onto dslim's `cifar_resnet32`, `cifar_resnet110` and `resnet101` (also `resnet18`/`resnet50` bases) with
`block_policy`.

The files:
- a pretrained base (`cv/pretrained/*.t7`): `{'state_dict': ...}` (plus the trainer's `epoch`, `best_prec1`...),
  keys `conv1`, `bn1`, `layer{L}.{j}.{conv,bn}{1,2[,3]}`, `layer{L}.0.downsample.{0,1}` (ImageNet), `fc`,
  possibly prefixed `module.`; a bare torchvision-style state_dict is read the same way;
- a BlockDrop checkpoint: `{'agent', 'epoch', 'reward', 'acc'}` after the curriculum, plus `'resnet'` after joint
  fine-tuning (older ones call the agent `'net'`). The ResNet is BlockDrop's flat version (`blocks.{s}.{b}.*`,
  `ds.{s}.{0,1}.*`), the agent a ResNet-8/10 (`features.*` in the same flat layout, `features.fc` in legacy files)
  with the keep-probability head `logit` and a value head `vnet`, which inference never uses (skipped).

A checkpoint holding only the agent needs its base: `--base` (the pretrained file the curriculum started from).
The BatchNorm statistics become those of the base's one subnet (`largest`), the policy's filed with them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from dslim.errors import UserError
from dslim.importers.common import ImportOptions, no_leftovers, strip_prefix, take
from dslim.io import preprocessing
from dslim.models.base import Supernet
from dslim.models.registry import supernet_class
from dslim.nn import SlimBatchNorm2d, SlimConv2d, SlimLinear

SUMMARY = "Tushar-N/blockdrop's base ResNet (`state_dict`) and BlockDrop agent/resnet `.t7`"
ALLOWED = ()
# (stem kernel, blocks per stage) -> dslim's architecture
ARCHS = {(3, (5, 5, 5)): "cifar_resnet32", (3, (18, 18, 18)): "cifar_resnet110", (7, (2, 2, 2, 2)): "resnet18",
         (7, (3, 4, 6, 3)): "resnet50", (7, (3, 4, 23, 3)): "resnet101"}  # fmt: skip
# a block's body (dslim index) -> the original's layer names
BODY = {0: "conv1", 1: "bn1", 3: "conv2", 4: "bn2", 6: "conv3", 7: "bn3"}
VALUE_HEAD = ("vnet.weight", "vnet.bias")


@dataclass(frozen=True)
class Options(ImportOptions):
    """Tushar-N/blockdrop: a pretrained base ResNet, or a BlockDrop checkpoint (agent, and the fine-tuned ResNet)."""

    base: str | None = None
    """The base ResNet's checkpoint (`cv/pretrained/...t7`), for a file that holds only the agent."""


def flat(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ResNet state_dict in BlockDrop's flat names: `layer{L}.{j}.` -> `blocks.{L-1}.{j}.`, `layer{L}.0.downsample.`
    -> `ds.{L-1}.`; flat names stay."""
    out = {}
    for key, value in strip_prefix(state).items():
        m = re.fullmatch(r"layer(\d+)\.(\d+)\.(.+)", key)
        if m and m[3].startswith("downsample."):
            key = f"ds.{int(m[1]) - 1}.{m[3].removeprefix('downsample.')}"
        elif m:
            key = f"blocks.{int(m[1]) - 1}.{m[2]}.{m[3]}"
        out[key] = value
    return out


def base_state(ckpt: dict) -> dict[str, torch.Tensor] | None:
    """The base ResNet a file holds (fine-tuned `resnet`, pretrained `state_dict`, or the file itself), flat."""
    for key in ("resnet", "state_dict"):
        if isinstance(ckpt.get(key), dict):
            state = flat(ckpt[key])
            return state if "conv1.weight" in state else None
    state = flat(ckpt)
    return state if "conv1.weight" in state and "blocks.0.0.conv1.weight" in state else None


def agent_state(ckpt: dict) -> dict[str, torch.Tensor] | None:
    """The policy network a file holds (`agent`, or `net` in older files), without the legacy `features.fc`."""
    agent = ckpt.get("agent", ckpt.get("net"))
    if not isinstance(agent, dict):
        return None
    state = {k: v for k, v in strip_prefix(agent).items() if not k.startswith("features.fc.")}
    return state if "logit.weight" in state and "features.conv1.weight" in state else None


def looks_like(ckpt: dict) -> bool:
    """A BlockDrop agent, or a ResNet in the original's (or torchvision's) names."""
    base = base_state(ckpt)
    return agent_state(ckpt) is not None or (base is not None and {"fc.weight", "blocks.0.0.conv1.weight"} <= set(base))


def _arch(base: dict[str, torch.Tensor], path: str) -> str:
    stem = base["conv1.weight"]
    depths = []
    while any(k.startswith(f"blocks.{len(depths)}.") for k in base):
        s = len(depths)
        depths.append(len({k.split(".")[2] for k in base if k.startswith(f"blocks.{s}.")}))
    found = (stem.shape[-1] if stem.dim() == 4 else 0, tuple(depths))
    if found not in ARCHS:
        raise UserError(f"{path}: a ResNet with a {found[0]}x{found[0]} stem and {list(depths)} blocks per stage, "
                        "which dslim does not have (CIFAR ResNet-32/110, ResNet-18/50/101)")  # fmt: skip
    return ARCHS[found]


def _original(name: str, where: dict[int, tuple[int, int]]) -> str:
    """dslim layer name (base or policy) -> the original's flat name (`features.3.body.4` -> `blocks.0.3.bn2`);
    `where`: each base block's (stage, index in stage)."""
    policy = name.startswith("policy.")
    name = name.removeprefix("policy.")
    prefix = "features." if policy else ""
    if name.startswith("stem."):
        return prefix + {"0": "conv1", "1": "bn1"}[name.split(".")[1]]
    if name in ("classifier", "head"):
        return "logit" if policy else "fc"
    _, i, part, j = name.split(".")
    stage, block = (int(i), 0) if policy else where[int(i)]  # the policy's ResNet has one block per stage
    if part == "shortcut":
        return f"{prefix}ds.{stage}.{j}"
    return f"{prefix}blocks.{stage}.{block}.{BODY[int(j)]}"


def _copy(net: Supernet, state: dict[str, torch.Tensor], policy: bool, path: str) -> set[str]:
    """The base's (or the policy's) weights and BatchNorm statistics into `net`; returns the keys used."""
    where = {i: (s, b) for s, blocks in enumerate(_stages(net)) for b, i in enumerate(blocks)}
    key, used = net.largest().key, set()

    def get(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        used.add(name)
        return take(state, name, shape, path)

    for name, m in net.named_modules():
        if name.startswith("policy.") != policy:
            continue
        if isinstance(m, (SlimConv2d, SlimLinear)):
            for pname, p in m.named_parameters(recurse=False):
                p.data.copy_(get(f"{_original(name, where)}.{pname}", tuple(p.shape)))
        elif isinstance(m, SlimBatchNorm2d):
            theirs, c = _original(name, where), m.num_features
            m.weight.data.copy_(get(f"{theirs}.weight", (c,)))
            m.bias.data.copy_(get(f"{theirs}.bias", (c,)))
            stats = m.stats[key]
            stats.running_mean.copy_(get(f"{theirs}.running_mean", (c,)))
            stats.running_var.copy_(get(f"{theirs}.running_var", (c,)))
            if f"{theirs}.num_batches_tracked" in state:  # absent from PyTorch 0.3's files
                stats.num_batches_tracked.copy_(get(f"{theirs}.num_batches_tracked", ()))
    return used


def _stages(net: Supernet) -> list[list[int]]:
    """The base's block indices per stage (a stage starts where a block's output group changes)."""
    stages: list[list[int]] = []
    previous = None
    for i, block in enumerate(net.blocks):
        group = block.body[-1].group  # the block's output BatchNorm: its stage's residual stream
        if group != previous:
            stages.append([])
        stages[-1].append(i)
        previous = group
    return stages


def convert(ckpt: dict, opts: Options) -> tuple[Supernet, dict]:
    """dslim's ResNet of the file's base, with the file's policy network (if any) as its `block_policy`."""
    path = opts.path
    base, agent = base_state(ckpt), agent_state(ckpt)
    base_path = path
    if base is None:
        if opts.base is None:
            raise UserError(f"{path} holds only BlockDrop's policy network (agent): give its base ResNet with --base "
                            "F.t7 (the pretrained file the policy was trained on)")  # fmt: skip
        base_path = opts.base
        from dslim.importers import read_any  # the package imports this module: read_any is there by now

        base = base_state(read_any(opts.base))
        if base is None:
            raise UserError(f"--base {opts.base} holds no ResNet (`state_dict` or `resnet` with conv1, layer/blocks)")
    elif opts.base is not None:
        raise UserError(f"{path} holds its own ResNet; --base {opts.base} would be ignored: leave it out")
    if "fc.weight" not in base or base["fc.weight"].dim() != 2:
        raise UserError(f"{base_path} has no 2-D fc.weight: not a BlockDrop base ResNet")
    arch = _arch(base, base_path)
    kwargs: dict = dict(num_classes=base["fc.weight"].shape[0], bn="private", block_policy=agent is not None)
    if not arch.startswith("cifar_"):
        kwargs.update(widths=(1.0,))
    net: Supernet = supernet_class(arch)(**kwargs)
    no_leftovers(base, _copy(net, base, False, base_path), base_path)
    meta: dict = {"source": str(path), "weights": "resnet" if "resnet" in ckpt else "state_dict"}
    if agent is not None:
        blocks = agent["logit.weight"].shape[0]
        if blocks != len(net.blocks):
            raise UserError(f"{path}: its policy decides {blocks} blocks, but the base ({arch}) has {len(net.blocks)}")
        no_leftovers(agent, _copy(net, agent, True, path) | set(VALUE_HEAD), path)
        net.router_trained = True
        meta.update(weights="agent" + (" and resnet" if "resnet" in ckpt else f" (base {base_path})"),
                    skipped="vnet: the value head, unused at inference")  # fmt: skip
    for k in ("epoch", "acc", "reward", "best_prec1"):
        if isinstance(ckpt.get(k), (int, float)) or isinstance(ckpt.get(k), torch.Tensor) and ckpt[k].numel() == 1:
            meta[f"original_{k}"] = float(ckpt[k])
    meta["note"] = f"{arch}" + (" with its policy network" if agent is not None else ", no policy network")
    meta["preprocessing"] = convention(arch, kwargs["num_classes"])
    return net, meta


def convention(arch: str, num_classes: int) -> dict:
    """The inputs the original's weights read (Tushar-N/blockdrop utils.py `get_transforms`): its CIFAR-10
    ResNet-32 normalized pixels, its other CIFAR models raw [0, 1] pixels, ImageNet's the ImageNet mean/std."""
    if not arch.startswith("cifar_"):
        return preprocessing.convention(**preprocessing.IMAGENET, input_size=224)
    if arch == "cifar_resnet32" and num_classes == 10:
        mean, std = [m / 255 for m in (125.3, 123.0, 113.9)], [s / 255 for s in (63.0, 62.1, 66.7)]
        return preprocessing.convention(mean, std, input_size=32, crop_fraction=1.0)
    return preprocessing.convention(**preprocessing.RAW, input_size=32, crop_fraction=1.0)
