"""Checks a stage runs on its settings before any work (the `check` of `register_stage`)."""

from __future__ import annotations

from collections.abc import Sequence

from dslim.config import Config, option_name
from dslim.errors import UserError
from dslim.models.base import Supernet
from dslim.stages.registry import STAGES


def check_names(config: Config, net: Supernet, names: Sequence[str], field: str) -> None:
    """Every name must be one of the model's subnets, unless a stage of the pipeline produces named subnets (whose
    names are known only once it has run; they are resolved when the stage that uses them starts)."""
    pending = any("subnets" in STAGES.get(s).writes for s in config.pipeline)
    for name in names:
        try:
            net.resolve(name)
        except UserError as e:
            if not pending:
                raise UserError(f"{option_name(field)}: {e}") from None
