"""The one export door: `export_model` writes a subnet (or a trained dynamic model) as standalone files with their
cards. The `export` stage and `dslim.export` both go through it, so they write the same files the same way.

A subnet the supernet holds no BatchNorm statistics for (any width of a universally slimmable range, a searched
subnet) is calibrated first from training batches; so is each route of a dynamic model. Before this door existed,
only the command calibrated a dynamic model's routes, and the stage exported the routes as they were (refused, in
one line, when one had no statistics). The command's behaviour is the one kept, for both: a route that has
statistics is left untouched (so whatever the stage exported before, it exports byte for byte the same), one that
has none is calibrated rather than refused, as any static subnet already was.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from torch import nn

from dslim.config import Config
from dslim.deploy.card import dynamic_card, subnet_card, write_card
from dslim.deploy.extraction import extract, extract_dynamic, save_subnet
from dslim.deploy.onnx import Exporter, export_dynamic, export_extracted
from dslim.evaluation.calibration import calibrate_missing
from dslim.io import preprocessing
from dslim.models.base import Supernet
from dslim.subnet import Subnet

Format = Literal["safetensors", "onnx"]
FORMATS: tuple[Format, ...] = ("safetensors", "onnx")
"""Every format, in the order a model's files are written."""


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
    subnet: Subnet | None,
    outs: Mapping[Format, str | os.PathLike],
    *,
    calibrate_batches: int,
    run_dir: Path | None = None,
    exporter: Exporter = "dynamo",
    accelerator=None,  # type: ignore[no-untyped-def]
) -> dict:
    """Write `net` at `subnet` (None: the dynamic model, routing each input) to each file of `outs` (`{format:
    path}`; a dynamic model's ONNX is a folder), each with its card; returns the card.

    Missing statistics are calibrated first on `calibrate_batches` training batches: a collective under several
    processes (every process calls it with the `accelerator`), nothing at all when none is missing. The card quotes
    `run_dir`'s eval.json and latency.json where they cover this model. The subnet is extracted once for all formats.
    """
    size = config.model.input_size
    convention = preprocessing.record(config.data, size)
    calibrate_missing(net, config, to_calibrate(net, {} if subnet is None else {name: subnet}, subnet is None),
                      calibrate_batches, accelerator=accelerator)  # fmt: skip
    if subnet is None:
        card = dynamic_card(net, config, run_dir)
    else:
        card = subnet_card(net, config, name, subnet, run_dir)
    model: nn.Module | None = None
    for fmt in (f for f in FORMATS if f in outs):
        out = outs[fmt]
        if subnet is None and fmt == "onnx":  # a folder, written whole with its card inside
            export_dynamic(net, out, size, exporter, also=lambda tmp: write_card(tmp, card, "onnx"))
            continue
        if subnet is None:
            save_subnet(extract_dynamic(net), None, out, input_size=size, convention=convention)
        else:
            model = extract(net, subnet) if model is None else model
            if fmt == "onnx":
                export_extracted(model, out, size, exporter)  # after the safetensors file: it makes `model` float32
            else:
                save_subnet(model, subnet, out, input_size=size, convention=convention)
        write_card(out, card, fmt)
    return card
