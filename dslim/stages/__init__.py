"""Stages: resumable units of a pipeline, found by name in a registry (`dslim.stages.registry`).

Importing this package registers the built-in stages; `run_pipeline` runs a recipe's pipeline.
"""

from dslim.config import stages_config
from dslim.stages import blockdrop, bn_recalibration, evaluate, export, gate, supernet  # noqa: F401  (register them)
from dslim.stages.context import StageContext
from dslim.stages.pipeline import run_pipeline, select_stages, validate
from dslim.stages.registry import Stage, register_stage

__all__ = ["Stage", "StageContext", "register_stage", "run_pipeline", "select_stages", "stages_config", "validate"]
