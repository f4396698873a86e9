"""Stages: resumable units of a pipeline, found by name in a registry (`dslim.stages.registry`).

Importing this package registers the built-in stages (so `Config.stages` holds their settings: `dslim.recipes` and
every command import it); `run_pipeline` runs a recipe's pipeline, `dslim.stages.run.open_run` reads a run back.
"""

from dslim.config import stages_config

# Registering order is the order in which stages outside a recipe's pipeline run when several are selected
# (`--stages search retrain`), so it is a pipeline's order.
# isort: off
from dslim.stages import supernet, blockdrop, bn_recalibration, gate, search, dmcp, sample, retrain, evaluate, export  # noqa: F401

# isort: on
from dslim.stages.context import StageContext
from dslim.stages.pipeline import run_pipeline, select_stages, validate
from dslim.stages.registry import Stage, register_stage

__all__ = ["Stage", "StageContext", "register_stage", "run_pipeline", "select_stages", "stages_config", "validate"]
