"""The `export` stage: subnets as standalone models with physically sliced weights (`dslim.load_subnet` reads them),
in each of the chosen formats, each with its card (`<name>.config.json`, or a model folder's `config.json` and
`README.md`); a trained dynamic model too. Every model
goes through the one export door, `dslim.deploy.export.export_model`, as `dslim.export` does."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dslim.config import Config
from dslim.deploy.export import export_model, to_calibrate
from dslim.deploy.onnx import require
from dslim.errors import UserError
from dslim.evaluation.calibration import calibrate_missing
from dslim.io import write_json
from dslim.models.base import Supernet
from dslim.stages.checks import check_names
from dslim.stages.context import StageContext
from dslim.stages.registry import register_stage
from dslim.stages.run import default_names
from dslim.subnet import Subnet


@dataclass(frozen=True)
class ExportConfig:
    """Subnets written as standalone models (physically sliced weights); a trained dynamic model too."""

    subnets: tuple[str, ...] = ()
    """Subnets to write as `export/<name>.safetensors` (empty: every named subnet, those of named-subnets files
    included)."""
    formats: tuple[Literal["safetensors", "onnx", "folder"], ...] = ("safetensors",)
    """Formats to write: `safetensors` (`export/<name>.safetensors`), `onnx` (`export/<name>.onnx`; a dynamic model
    as the folder `export/dynamic/`, graphs and routing.json) and/or `folder` (`export/folders/<name>/`: a model
    folder with its model card, as the Hugging Face Hub holds it)."""
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
    dynamic = net.is_dynamic and net.router_trained
    batches = ctx.calibrate_batches
    # every process calibrates together first; the main process then writes, with nothing left to calibrate
    calibrate_missing(net, ctx.config, to_calibrate(net, subnets, dynamic), batches, accelerator=ctx.accelerator)
    if ctx.accelerator.is_main_process:

        def export(name: str, subnet: Subnet | None) -> None:
            paths = {"onnx": name if subnet is None else f"{name}.onnx", "safetensors": f"{name}.safetensors",
                     "folder": f"folders/{name}"}  # (a dynamic model's ONNX is a folder of graphs)  # fmt: skip
            outs = {fmt: ctx.dir / paths[fmt] for fmt in cfg.formats}
            export_model(net, ctx.config, name, subnet, outs, calibrate_batches=batches, run_dir=ctx.layout.root,
                         recipe=ctx.recipe, exporter=cfg.onnx_exporter)  # fmt: skip

        for name, subnet in subnets.items():
            export(name, subnet)
        if dynamic:
            export("dynamic", None)
        write_json(ctx.layout.path(ctx.name, "export"), {"subnets": list(subnets), "formats": list(cfg.formats)})
    ctx.accelerator.wait_for_everyone()
