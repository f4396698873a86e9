"""Channel configurations as files: dslim's subnet JSON, and the channel-config YAML of mmrazor 0.x's AutoSlim.

A JSON file holds a subnet as dslim writes it (`{"channels": {group: int}, "blocks": ...}`, or an entry of a
`subnets.json` with that under `"subnet"`). A YAML file maps layer names to their channel counts, as mmrazor 0.x
writes one per searched configuration::

    backbone.layer2.0.conv.0.conv: {in_channels: 8, out_channels: 96, raw_in_channels: 24, raw_out_channels: 144}
    backbone.layer2.0.conv.0.bn: {out_channels: 96, raw_out_channels: 144}

Layer names are those of mmcls's models where dslim's architecture has an mmcls twin (MobileNetV2, ResNet-18/50:
`MMCLS_NAMES`), else dslim's own module paths (which are also accepted for the twins). Each layer's counts name
channel groups, so a file fits the architecture only if every layer is known, no count exceeds the supernet's
(`raw_*`, when given, must equal the supernet's own counts), layers dslim does not prune keep their width, and all
the layers of one group (tied by a residual, or a depthwise conv and its input) agree. A group no layer mentions
keeps its widest width. The first entry that breaks a rule is named in a `UserError`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from torch import nn

from dslim.errors import UserError
from dslim.io.atomic import write_text
from dslim.models.base import Supernet
from dslim.nn import SlimBatchNorm2d, SlimConv2d, SlimLinear
from dslim.subnet import Subnet

YAML_SUFFIXES = (".yaml", ".yml")

Port = tuple[str, str | None, int]
"""One channel count of a layer: (field, channel group or None if fixed, the supernet's count)."""


def ports(m: nn.Module) -> list[Port]:
    """The channel counts a layer's file entry holds (empty for layers without channels of their own)."""
    if isinstance(m, SlimConv2d):
        return [("in_channels", m.in_group, m.in_channels), ("out_channels", m.out_group, m.out_channels)]
    if isinstance(m, SlimLinear):
        return [("in_channels", m.in_group, m.in_features), ("out_channels", m.out_group, m.out_features)]
    if isinstance(m, SlimBatchNorm2d):
        return [("out_channels", m.group, m.num_features)]
    return []


# -- mmcls's names for dslim's layers ----------------------------------------------------------------------------
def _conv_bn_names(body: nn.Module, prefix: str, pattern: str) -> dict[str, str]:
    """`{prefix.i: name}` for each conv of a block's `body` and its BN: `pattern` formatted with the conv's index `k`
    (from 0), `n` (from 1) and `t` (`conv` or `bn`)."""
    out, k = {}, -1
    for i, layer in enumerate(body):
        if isinstance(layer, SlimConv2d):
            k += 1
            out[f"{prefix}.{i}"] = pattern.format(k=k, n=k + 1, t="conv")
        elif isinstance(layer, SlimBatchNorm2d):
            out[f"{prefix}.{i}"] = pattern.format(k=k, n=k + 1, t="bn")
    return out


def _mmcls_mobilenet_v2(net: nn.Module) -> dict[str, str]:
    """mmcls MobileNetV2: `backbone.conv1`, `backbone.layer{1..7}.{j}.conv.{k}`, `backbone.conv2` (ConvModules with
    `.conv` and `.bn`), `head.fc`."""
    names = {"stem.0": "backbone.conv1.conv", "stem.1": "backbone.conv1.bn", "head.0": "backbone.conv2.conv",
             "head.1": "backbone.conv2.bn", "classifier": "head.fc"}  # fmt: skip
    blocks_in: dict[int, int] = {}
    for i, (_, _, g_out, *_) in enumerate(net.plan):  # type: ignore[union-attr]
        layer = int(g_out[1:]) + 1  # stage group `s{n}` is mmcls's layer n + 1
        j = blocks_in[layer] = blocks_in.get(layer, -1) + 1
        body = net.features[i].body  # type: ignore[index]
        names.update(_conv_bn_names(body, f"features.{i}.body", f"backbone.layer{layer}.{j}.conv.{{k}}.{{t}}"))
    return names


def _mmcls_resnet(net: nn.Module) -> dict[str, str]:
    """mmcls ResNet: `backbone.conv1`, `backbone.bn1`, `backbone.layer{1..4}.{j}.conv{k}` / `.bn{k}` /
    `.downsample.{0,1}`, `head.fc`."""
    names = {"stem.0": "backbone.conv1", "stem.1": "backbone.bn1", "classifier": "head.fc"}
    i = 0
    for stage, depth in enumerate(net.depths):  # type: ignore[union-attr]
        for j in range(depth):
            prefix = f"backbone.layer{stage + 1}.{j}"
            block = net.features[i]  # type: ignore[index]
            names.update(_conv_bn_names(block.body, f"features.{i}.body", prefix + ".{t}{n}"))
            if isinstance(block.shortcut, nn.Sequential):
                names.update({f"features.{i}.shortcut.0": f"{prefix}.downsample.0",
                              f"features.{i}.shortcut.1": f"{prefix}.downsample.1"})  # fmt: skip
            i += 1
    return names


MMCLS_NAMES: dict[str, Callable[[nn.Module], dict[str, str]]] = {
    "mobilenet_v2": _mmcls_mobilenet_v2,
    "resnet18": _mmcls_resnet,
    "resnet50": _mmcls_resnet,
}
"""Architecture -> its dslim module paths mapped to the names mmcls gives the same layers."""


def layers(net: Supernet) -> dict[str, tuple[str, list[Port]]]:
    """File name -> (dslim module path, ports) of every layer with channels, in the network's order; a `UserError`
    if layer counts cannot express the network's groups (a converted model's layers follow several groups)."""
    mmcls = MMCLS_NAMES[net.arch](net) if net.arch in MMCLS_NAMES else {}
    found = {mmcls.get(path, path): (path, ports(m)) for path, m in net.named_modules() if ports(m)}
    named = {group for _, entries in found.values() for _, group, _ in entries if group is not None}
    if set(net.groups) - named:
        raise UserError(f"an mmrazor channel config cannot express {net.arch}'s channel groups (its layers' counts do "
                        f"not name them): use a dslim subnet .json")  # fmt: skip
    return found


# -- reading ---------------------------------------------------------------------------------------------------
def read_channels(path: str | os.PathLike, net: Supernet) -> Subnet:
    """The subnet a channel file (`.json`, or mmrazor `.yaml`/`.yml`) describes for `net`; a `UserError` naming the
    first entry that does not fit."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"channel file {path} does not exist")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read channel file {path}: {e}") from None
    if path.suffix.lower() in YAML_SUFFIXES:
        return _from_yaml(text, path, net)
    if path.suffix.lower() == ".json":
        return _from_json(text, path, net)
    raise UserError(f"channel file {path}: give a .json (dslim subnet) or .yaml/.yml (mmrazor channel config)")


def read_named(paths: Sequence[str | os.PathLike], net: Supernet) -> dict[str, Subnet]:
    """Channel files as named subnets, each called by its file's stem."""
    out: dict[str, Subnet] = {}
    for p in paths:
        name = Path(p).stem
        if name in out:
            raise UserError(f"two channel files are named {name!r}: subnets are named by file stem, rename one")
        out[name] = read_channels(p, net)
    return out


def _assign(net: Supernet, given: dict[str, tuple[int, str]], group: str, value: object, where: str) -> None:
    """Record `value` channels for `group`, said by `where`; a `UserError` if it cannot be."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise UserError(f"{where}: expected a whole number of channels, not {value!r}")
    g = net.groups[group]
    if value > g.max:
        raise UserError(f"{where}: {value} channels is above the supernet's {g.max} (channel group {group!r})")
    try:
        g.check(value)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    if group in given and given[group][0] != value:
        other, by = given[group]
        raise UserError(
            f"{where}: {value} channels, but {by} gives channel group {group!r} {other}: layers tied by a residual "
            "(or a depthwise conv and its input) must have the same width"
        )
    given.setdefault(group, (value, where))


def _subnet(net: Supernet, given: dict[str, tuple[int, str]], blocks: tuple[bool, ...] | None, path: Path) -> Subnet:
    subnet = Subnet.of({g: given[g][0] if g in given else grp.max for g, grp in net.groups.items()}, blocks)
    try:
        net.check(subnet)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    return subnet


def _from_yaml(text: str, path: Path, net: Supernet) -> Subnet:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not readable YAML ({' '.join(str(e).split())[:200]})") from None
    if not isinstance(data, dict) or not data:
        raise UserError(f"{path} should map layer names to {{in_channels, out_channels, ...}} (mmrazor channel config)")
    known = layers(net)
    by_path = {entry[0]: entry for entry in known.values()}
    given: dict[str, tuple[int, str]] = {}
    for key, entry in data.items():
        where = f"{path}: entry {key!r}"
        found = known.get(key) if isinstance(key, str) else None
        found = found or (by_path.get(key) if isinstance(key, str) else None)
        if found is None:
            raise UserError(f"{where}: {net.arch} has no such layer (its layers are named like {next(iter(known))!r})")
        fields = {f: (group, raw) for f, group, raw in found[1]}
        allowed = set(fields) | {f"raw_{f}" for f in fields}
        if not isinstance(entry, dict) or set(entry) - allowed:
            raise UserError(f"{where}: expected a mapping with {', '.join(sorted(allowed))}")
        for field, (group, raw) in fields.items():
            value, raw_given = entry.get(field), entry.get(f"raw_{field}")
            if raw_given is not None and raw_given != raw:
                raise UserError(f"{where}: raw_{field} {raw_given}, but the supernet's layer has {raw}: the file was "
                                "written for another supernet (another width or number of classes?)")  # fmt: skip
            if value is None:
                continue
            if group is None:
                if value != raw:
                    raise UserError(f"{where}: {field} {value}, but dslim's {net.arch} keeps this layer at {raw} "
                                    "(it is not prunable)")  # fmt: skip
                continue
            _assign(net, given, group, value, f"{where} {field}")
    return _subnet(net, given, None, path)


def _from_json(text: str, path: Path, net: Supernet) -> Subnet:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not readable JSON ({e})") from None
    if isinstance(obj, dict) and isinstance(obj.get("subnet"), dict):  # an entry of a subnets.json
        obj = obj["subnet"]
    parsed = Subnet.from_json(obj, str(path))
    given: dict[str, tuple[int, str]] = {}
    for group, value in parsed.items():
        if group not in net.groups:
            raise UserError(f"{path}: {net.arch} has no channel group {group!r}; its groups: {', '.join(net.groups)}")
        _assign(net, given, group, value, f"{path}: group {group!r}")
    return _subnet(net, given, parsed.blocks, path)


# -- writing ---------------------------------------------------------------------------------------------------
def to_yaml(net: Supernet, subnet: Subnet) -> str:
    """`subnet` as an mmrazor 0.x channel config (mmcls layer names where known)."""
    import yaml

    net.check(subnet)
    if subnet.blocks is not None:
        raise UserError("mmrazor's channel config has no block mask: write this subnet as .json")
    entries = {}
    for name, (_, layer_ports) in layers(net).items():
        counts = {field: raw if group is None else subnet[group] for field, group, raw in layer_ports}
        entries[name] = {**counts, **{f"raw_{field}": raw for field, _, raw in layer_ports}}
    return yaml.safe_dump(entries, sort_keys=False)


def write_channels(path: str | os.PathLike, net: Supernet, subnet: Subnet) -> None:
    """Write `subnet` as a channel file: mmrazor YAML for `.yaml`/`.yml`, dslim's subnet JSON for `.json`."""
    suffix = Path(path).suffix.lower()
    if suffix in YAML_SUFFIXES:
        text = to_yaml(net, subnet)
    elif suffix == ".json":
        text = json.dumps(subnet.to_json(), indent=2) + "\n"
    else:
        raise UserError(f"channel file {path}: name it .json (dslim subnet) or .yaml/.yml (mmrazor channel config)")
    try:
        write_text(path, text)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror}") from None
