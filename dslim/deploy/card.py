"""Artifact cards: a plain-JSON description next to every exported model, as Hugging Face's `config.json`, so other
tools can read what a file is without dslim.

`F.safetensors` and `F.onnx` get `F.config.json` (one card per model: exporting the same model in both formats lists
both files); an exported folder (a dynamic model's ONNX graphs, a model folder) holds `config.json`. A card says what
the model is (architecture and its arguments, channels, block mask, classes, input size and preprocessing), what it
costs (MACs and params per image; the latency the run's `latency.json` measured or estimated, with the device), how
good it is (top-1/top-5 from the run's `eval.json`, when that subnet or the dynamic model was evaluated) and how it
was made (`training`: the recipe and the resolved config). A whole supernet's card (`supernet_card`) says all that of
each slice it holds. Unknown values are null. Cards are written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path

import dslim
from dslim.config import Config, config_json
from dslim.deploy.extraction import widest
from dslim.deploy.latency_table import LatencyTable
from dslim.errors import UserError
from dslim.evaluation.report import read_report
from dslim.io import preprocessing, write_json
from dslim.io.readers import CARD, read_json
from dslim.models.base import Supernet
from dslim.models.complexity import measure
from dslim.subnet import Subnet

FORMAT = "dslim.card/1"


def card_path(model_path: str | os.PathLike) -> Path:
    """`F.config.json` for a file `F.<suffix>`; `F/config.json` for an exported folder."""
    p = Path(model_path)
    if p.is_dir():
        return p / "config.json"
    return p.with_name(p.name.rsplit(".", 1)[0] + ".config.json")


def read_card(path: Path) -> dict | None:
    """The card at `path` if it is one dslim wrote (`dslim.io.readers.CARD`), else None."""
    try:
        card = read_json(path, "model card", CARD, max_bytes=2**20) if path.is_file() else None
    except UserError:
        return None
    return card if card is not None and card["format"] == FORMAT else None  # type: ignore[return-value, index]


def run_report(run_dir: Path | None) -> dict | None:
    """The run's eval.json, if it has one (a damaged one is refused, naming it)."""
    return read_report(run_dir / "eval.json") if run_dir is not None else None


def _accuracy(report: dict | None, name: str | None) -> dict | None:
    """The evaluation of `name` (None: the dynamic model) in a run's report, if it has one."""
    if report is None:
        return None
    row = report.get("dynamic") if name is None else next((r for r in report["subnets"] if r["subnet"] == name), None)
    if row is None:
        return None
    return {"top1": row["top1"], "top5": row.get("top5"), "source": "eval.json"}


def _latency(run_dir: Path | None, net: Supernet, size: int, subnets: dict[str, Subnet]) -> dict | None:
    """`{name: {batch: ms}}` of `subnets` from the run's latency.json (measured, or estimated from its layers)."""
    path = run_dir / "latency.json" if run_dir is not None else None
    if path is None or not path.is_file():
        return None
    table = LatencyTable.read(path)  # a damaged one is refused, naming it
    try:
        table.check(net, size)
    except UserError:
        return None  # a table of another model: the card says nothing rather than something wrong
    found, estimated = {}, False
    for name, subnet in subnets.items():
        try:
            values = {b: table.latency(subnet, b, net) for b in table.batches}
        except UserError:
            continue  # neither measured nor estimable: no latency for this one
        found[name] = {str(b): round(ms, 4) for b, (ms, _) in values.items()}
        estimated |= any(e for _, e in values.values())
    if not found:
        return None
    device = table.device
    return {"ms": found, "estimated": estimated, "device": device.get("name"), "device_type": device.get("type"),
            "threads": device.get("threads"), "source": "latency.json"}  # fmt: skip


def _common(net: Supernet, config: Config, training: dict | None) -> dict:
    data, size = config.data, config.model.input_size
    return {
        "format": FORMAT,
        "model_type": "dslim",
        "architecture": net.arch,
        "num_classes": config.model.num_classes,
        "input_size": size,
        "preprocessing": preprocessing.record(data, size),
        "dslim_version": dslim.__version__,
        "training": training,
    }  # fmt: skip


def training_record(config: Config, recipe: str | None) -> dict:
    """How the weights were made, as every exported file and card records it: the recipe and the resolved config
    (`dslim.train --config` re-runs it)."""
    return {"recipe": recipe, "config": config_json(config)}


def subnet_card(
    net: Supernet, config: Config, name: str, subnet: Subnet, run_dir: Path | None, training: dict | None = None
) -> dict:
    """The card of one static subnet of `net` (a run's supernet; `run_dir` for its eval.json and latency.json;
    `training`: its `training_record`)."""
    size = config.model.input_size
    cost = measure(net, size, subnet)
    latency = _latency(run_dir, net, size, {name: subnet})
    return {
        **_common(net, config, training),
        "dynamic": False,
        "subnet": name,
        "arch_kwargs": net.static_kwargs(),
        "channels": dict(subnet.items()),
        "blocks": None if subnet.blocks is None else list(subnet.blocks),
        "macs": cost.macs,
        "params": cost.params,
        "accuracy": _accuracy(run_report(run_dir), name),
        "latency_ms": None if latency is None else {**latency, "ms": latency["ms"][name]},
    }


def dynamic_card(net: Supernet, config: Config, run_dir: Path | None, training: dict | None = None) -> dict:
    """The card of `net`'s dynamic model (routing each input): the routes of its export plan (DS-Net's route
    subnets, BlockDrop's every-block and shortcuts-only extremes), their cost, its evaluation."""
    size = config.model.input_size
    planned = net.export_plan().program["routes"]  # type: ignore[attr-defined]
    names = list(planned)
    routes = [Subnet.from_json(r["subnet"], f"route {n!r}") for n, r in planned.items()]
    report = run_report(run_dir)
    accuracy = _accuracy(report, None)
    return {
        **_common(net, config, training),
        "dynamic": True,
        "arch_kwargs": net.arch_kwargs,
        "routes": {
            n: {
                "channels": dict(r.items()),
                "blocks": None if r.blocks is None else list(r.blocks),
                "macs": measure(net, size, r).macs,
            }
            for n, r in zip(names, routes)
        },  # fmt: skip
        "macs_mean": (report or {}).get("dynamic", {}).get("macs_mean") if accuracy else None,
        "params": measure(net, size, widest(routes)).params,  # what the exported model holds, router aside
        "accuracy": accuracy,
        "latency_ms": _latency(run_dir, net, size, dict(zip(names, routes))),
    }


def supernet_card(
    net: Supernet, config: Config, slices: dict[str, Subnet], run_dir: Path | None, training: dict | None = None
) -> dict:
    """The card of a whole supernet stored with the statistics of each of `slices` (one checkpoint, every width):
    each slice's channels, cost, accuracy and latency as the subnet cards say them; the dynamic model's too."""
    size, report = config.model.input_size, run_report(run_dir)
    latency = _latency(run_dir, net, size, slices)
    rows = {}
    for name, subnet in slices.items():
        cost = measure(net, size, subnet)
        rows[name] = {"subnet": subnet.to_json(), "macs": cost.macs, "params": cost.params,
                      "accuracy": _accuracy(report, name),
                      "latency_ms": None if latency is None else latency["ms"].get(name)}  # fmt: skip
    routed = net.is_dynamic and net.router_trained
    return {
        **_common(net, config, training),
        "dynamic": False,
        "supernet": True,
        "arch_kwargs": net.arch_kwargs,
        "slices": rows,
        "dynamic_model": {"accuracy": _accuracy(report, None)} if routed else None,
        "params": measure(net, size, net.largest()).params,  # of its widest subnet
        "latency_device": None if latency is None else {k: v for k, v in latency.items() if k != "ms"},
    }


def write_card(model_path: str | os.PathLike, card: dict, kind: str) -> Path:
    """Write `card` for the model at `model_path` (its file `kind`: safetensors, onnx); a card already there for
    the same model keeps the files it listed."""
    path = card_path(model_path)
    old = read_card(path)
    files = {}
    same = ("architecture", "channels", "routes", "dynamic")
    if old is not None and all(old.get(k) == card.get(k) for k in same):
        files = old["files"]
    target = Path(model_path)
    files[kind] = "." if path.parent == target else target.name
    write_json(path, {**card, "files": files})
    return path
