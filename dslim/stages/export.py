"""The `export` stage: subnets as standalone models with physically sliced weights (`dslim.load_subnet` reads them),
in each of the chosen formats, each with its card (`<name>.config.json`); a trained dynamic model too."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dslim.calibration import calibrate_missing
from dslim.card import dynamic_card, subnet_card, write_card
from dslim.config import Config
from dslim.deploy import extract_dynamic, save_subnet
from dslim.errors import UserError
from dslim.io import write_json
from dslim.models.base import Supernet
from dslim.onnx_export import export_dynamic, export_static, require
from dslim.stages.checks import check_names
from dslim.stages.context import StageContext
from dslim.stages.layout import default_names
from dslim.stages.registry import register_stage


@dataclass(frozen=True)
class ExportConfig:
    """Subnets written as standalone models (physically sliced weights); a trained dynamic model too."""

    subnets: tuple[str, ...] = ()
    """Subnets to write as `export/<name>.safetensors` (empty: every named subnet, those of named-subnets files
    included)."""
    formats: tuple[Literal["safetensors", "onnx"], ...] = ("safetensors",)
    """Formats to write: `safetensors` (`export/<name>.safetensors`) and/or `onnx` (`export/<name>.onnx`; a dynamic
    model as the folder `export/dynamic/`, graphs and routing.json)."""
    onnx_exporter: Literal["dynamo", "torchscript"] = "dynamo"
    """ONNX exporter: `dynamo` (torch.export, PyTorch's default) or `torchscript` (deprecated, much faster)."""


def check(config: Config, net: Supernet, cfg: ExportConfig) -> None:
    check_names(config, net, cfg.subnets, "stages.export.subnets")
    if not cfg.formats:
        raise UserError("--stages.export.formats is empty: give safetensors and/or onnx")
    if "onnx" in cfg.formats:
        require(cfg.onnx_exporter)


@register_stage("export", ExportConfig, reads=("supernet", "subnets"), writes=("export",), check=check, uses_data=False)
def export_stage(ctx: StageContext) -> None:
    """Subnets as standalone models with physically sliced weights; a trained dynamic model as `dynamic`."""
    cfg: ExportConfig = ctx.settings  # type: ignore[assignment]
    net = ctx.supernet()
    names = list(cfg.subnets) or default_names(net, ctx.subnet_files)
    subnets = ctx.resolve(net, names)
    calibrate_missing(net, ctx.config, subnets, accelerator=ctx.accelerator)
    size = ctx.config.model.input_size
    if ctx.accelerator.is_main_process:
        root = ctx.layout.root
        for name, subnet in subnets.items():
            card = subnet_card(net, ctx.config, name, subnet, root)
            if "safetensors" in cfg.formats:
                save_subnet(net, subnet, ctx.dir / f"{name}.safetensors", size)
                write_card(ctx.dir / f"{name}.safetensors", card, "safetensors")
            if "onnx" in cfg.formats:
                export_static(net, subnet, ctx.dir / f"{name}.onnx", size, cfg.onnx_exporter)
                write_card(ctx.dir / f"{name}.onnx", card, "onnx")
        if net.is_dynamic and net.router_trained:
            card = dynamic_card(net, ctx.config, root)
            if "safetensors" in cfg.formats:
                save_subnet(extract_dynamic(net), None, ctx.dir / "dynamic.safetensors", size)
                write_card(ctx.dir / "dynamic.safetensors", card, "safetensors")
            if "onnx" in cfg.formats:
                export_dynamic(net, ctx.dir / "dynamic", size, cfg.onnx_exporter)
                write_card(ctx.dir / "dynamic", card, "onnx")
        write_json(ctx.layout.path(ctx.name, "export"), {"subnets": list(subnets), "formats": list(cfg.formats)})
    ctx.accelerator.wait_for_everyone()
