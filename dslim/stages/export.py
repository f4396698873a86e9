"""The `export` stage: subnets as standalone models with physically sliced weights (`dslim.load_subnet` reads them)."""

from __future__ import annotations

from dataclasses import dataclass

from dslim.calibration import calibrate_missing
from dslim.config import Config
from dslim.deploy import extract_dynamic, save_subnet
from dslim.io import write_json
from dslim.models.base import Supernet
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


def check(config: Config, net: Supernet, cfg: ExportConfig) -> None:
    check_names(config, net, cfg.subnets, "stages.export.subnets")


@register_stage("export", ExportConfig, reads=("supernet", "subnets"), writes=("export",), check=check)
def export_stage(ctx: StageContext) -> None:
    """Subnets as standalone models with physically sliced weights; a trained dynamic model as `dynamic`."""
    cfg: ExportConfig = ctx.settings  # type: ignore[assignment]
    net = ctx.supernet()
    names = list(cfg.subnets) or default_names(net, ctx.subnet_files)
    subnets = ctx.resolve(net, names)
    calibrate_missing(net, ctx.config, subnets, accelerator=ctx.accelerator)
    size = ctx.config.model.input_size
    if ctx.accelerator.is_main_process:
        for name, subnet in subnets.items():
            save_subnet(net, subnet, ctx.dir / f"{name}.safetensors", size)
        if net.is_dynamic and net.router_trained:
            save_subnet(extract_dynamic(net), None, ctx.dir / "dynamic.safetensors", size)
        write_json(ctx.layout.path(ctx.name, "export"), {"subnets": list(subnets)})
    ctx.accelerator.wait_for_everyone()
