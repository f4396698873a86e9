"""The one export door: `export_model` writes a subnet, a trained dynamic model, or the whole supernet with the
statistics of chosen slices, as standalone files with their cards. The `export` stage and `dslim.export` both go
through it, so they write the same files the same way.

A subnet the supernet holds no BatchNorm statistics for (any width of a universally slimmable range, a searched
subnet) is calibrated first from training batches; so is each route of a dynamic model. Before this door existed,
only the command calibrated a dynamic model's routes, and the stage exported the routes as they were (refused, in
one line, when one had no statistics). The command's behaviour is the one kept, for both: a route that has
statistics is left untouched (so whatever the stage exported before, it exports byte for byte the same), one that
has none is calibrated rather than refused, as any static subnet already was.

Every file written records how the weights were made (`training`: recipe and resolved config), in its metadata and
its card.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from torch import nn

from dslim.config import Config
from dslim.deploy.card import dynamic_card, subnet_card, supernet_card, training_record, write_card
from dslim.deploy.extraction import extract, extract_dynamic, save_subnet
from dslim.deploy.folder import write_folder
from dslim.deploy.onnx import Exporter, export_dynamic, export_extracted
from dslim.evaluation.calibration import calibrate_missing
from dslim.io import preprocessing
from dslim.io.artifacts import save_supernet
from dslim.models.base import Supernet
from dslim.subnet import Subnet

Format = Literal["safetensors", "onnx", "folder"]
FORMATS: tuple[Format, ...] = ("safetensors", "folder", "onnx")
"""Every format, in the order a model's files are written: `folder` is a model folder (`dslim.deploy.folder`)."""
Slices = Mapping[str, Subnet]
"""A whole supernet, stored with the statistics of each of these subnets (format `folder` only)."""


def to_calibrate(net: Supernet, subnets: Mapping[str, Subnet], dynamic: bool) -> dict[str, Subnet]:
    """What exporting `subnets` (and, if `dynamic`, the dynamic model) needs statistics for: the subnets, then each
    route that is not one of them (`route-<i>`)."""
    needed = dict(subnets)
    if dynamic:
        for i, route in enumerate(net.route_subnets()):  # type: ignore[attr-defined]
            if route not in needed.values():
                needed[f"route-{i}"] = route
    return needed


def export_model(
    net: Supernet,
    config: Config,
    name: str,
    subnet: Subnet | Slices | None,
    outs: Mapping[Format, str | os.PathLike],
    *,
    calibrate_batches: int,
    run_dir: Path | None = None,
    recipe: str | None = None,
    exporter: Exporter = "dynamo",
    accelerator=None,  # type: ignore[no-untyped-def]
) -> dict:
    """Write `net` at `subnet` (None: the dynamic model, routing each input; a mapping of names to subnets: the whole
    supernet holding those slices, as a model folder) to each file of `outs` (`{format: path}`; a dynamic model's
    ONNX and a model folder are folders), each with its card; returns the card.

    Missing statistics are calibrated first on `calibrate_batches` training batches: a collective under several
    processes (every process calls it with the `accelerator`), nothing at all when none is missing. The card quotes
    `run_dir`'s eval.json and latency.json where they cover this model, and `recipe` with `config` as how it was
    trained. The subnet is extracted once for all formats.
    """
    size = config.model.input_size
    convention = preprocessing.record(config.data, size)
    whole = subnet is not None and not isinstance(subnet, Subnet)  # (a Subnet is a Mapping too)
    slices = dict(subnet) if whole else {} if subnet is None else {name: subnet}  # type: ignore[arg-type]
    routed = subnet is None or (whole and net.is_dynamic and net.router_trained)
    calibrate_missing(net, config, to_calibrate(net, slices, routed), calibrate_batches, accelerator=accelerator)
    training = training_record(config, recipe)
    if whole:
        if set(outs) != {"folder"}:
            raise ValueError("a whole supernet exports only as a model folder")
        card = supernet_card(net, config, slices, run_dir, training)
        net.name_subnets({n: s for n, s in slices.items() if n not in net.named_subnets()})
        return write_folder(outs["folder"], card, name, lambda p: save_supernet(
            net, p, input_size=size, name=name, training=training, preprocessing=convention), run_dir)  # fmt: skip
    card = dynamic_card(net, config, run_dir, training) if subnet is None else \
        subnet_card(net, config, name, subnet, run_dir, training)  # type: ignore[arg-type]  # fmt: skip
    extracted: list[nn.Module] = []

    def model() -> nn.Module:  # extracted once for every format
        if not extracted:
            extracted.append(extract_dynamic(net) if subnet is None else extract(net, subnet))  # type: ignore[arg-type]
        return extracted[0]

    def save(path: Path) -> None:
        save_subnet(model(), None, path, input_size=size, convention=convention, name=name, training=training)

    for fmt in (f for f in FORMATS if f in outs):  # ONNX last: exporting makes the extracted model float32
        out = outs[fmt]
        if fmt == "folder":
            write_folder(out, card, name, save, run_dir)
            continue
        if fmt == "onnx" and subnet is None:  # a folder, written whole with its card inside
            export_dynamic(net, out, size, exporter, also=lambda tmp: write_card(tmp, card, "onnx"))
            continue
        if fmt == "onnx":
            export_extracted(model(), out, size, exporter)
        else:
            save(Path(out))
        write_card(out, card, fmt)
    return card
