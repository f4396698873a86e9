"""Running a pipeline: the selected stages in order, each a resumable unit reading the previous stage's artifact.

Rules:
- A finished stage is skipped; an unfinished one resumes from its newest checkpoint.
- A stage that reads a supernet starts from the artifact of the nearest earlier finished stage that wrote one; the
  first stage this invocation runs starts from `--from PATH` instead when given (a supernet artifact, e.g. another
  run's stage or an import).
- The whole config is validated before any data is read or anything is written.
- Re-running in the same directory with another config is refused, except for changes that cannot alter what is
  already computed: `pipeline`, settings that do not change results (`HARMLESS`), and the settings of stages that
  have not started. config.json then takes the new config and keeps the earlier argv in `history`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import platform
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from dslim.config import Config, validate_fields
from dslim.errors import UserError
from dslim.io import write_json
from dslim.io.artifacts import load_supernet
from dslim.models import from_config
from dslim.models.registry import arch_of
from dslim.stages.context import StageContext
from dslim.stages.evaluate import calibration_batches
from dslim.stages.layout import RunLayout, stage_order
from dslim.stages.registry import STAGES
from dslim.training import MetricsLog, make_accelerator

HARMLESS = ("pipeline", "tensorboard", "data.workers", "data.cache_dir", "data.eval_batch_size")
"""Config fields that may change between invocations on one run directory: they cannot change any result."""


def select_stages(config: Config, requested: Sequence[str]) -> list[str]:
    """The stages to run: the recipe's pipeline, or the requested ones in pipeline order."""
    for name in requested:
        STAGES.get(name)
    if not requested:
        return list(config.pipeline)
    return [s for s in stage_order(config) if s in requested]


def validate(config: Config, stages: Sequence[str] | None = None, where: str = "config") -> None:
    """Everything that can be checked before any work: field bounds, the model, and each stage's own checks
    (of `stages`, default the pipeline's) against that model. Builds the model on the `meta` device: free."""
    validate_fields(config)
    for name in config.pipeline:
        try:
            STAGES.get(name)
        except UserError as e:
            raise UserError(f"{where}: {e}") from None
    with torch.device("meta"):
        net = from_config(config.model)
    for name in config.pipeline if stages is None else stages:
        stage = STAGES.get(name)
        if stage.check is not None:
            stage.check(config, net, getattr(config.stages, name))


def _plain(obj: object) -> object:
    return json.loads(json.dumps(obj))


def _differences(old: object, new: object, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [d for k in keys for d in _differences(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [prefix.rstrip(".")]


def _versions() -> dict[str, str]:
    import accelerate

    import dslim

    return {"python": platform.python_version(), "torch": torch.__version__, "accelerate": accelerate.__version__,
            "dslim": dslim.__version__}  # fmt: skip


def write_config(layout: RunLayout, config: Config, recipe: str, argv: Sequence[str], accelerator: Accelerator) -> None:
    """Record the resolved config, or check it against the one already recorded (see the module's rules).

    Every process reads before any writes and meets the same barriers, so all of them refuse, or none does.
    """
    path = layout.config
    record: dict = {"config": _plain(dataclasses.asdict(config)), "recipe": recipe, "argv": list(argv),
                    "versions": _versions(), "history": []}  # fmt: skip
    accelerator.wait_for_everyone()
    write = not path.is_file()
    if not write:
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"{path} is not readable JSON ({e}); use another --out-dir") from None
        changed = _differences(old.get("config"), record["config"])
        fixed = [
            c for c in changed
            if not any(c == h or c.startswith(h + ".") for h in HARMLESS)
            and not (c.startswith("stages.") and c.split(".")[1] in STAGES.names()
                     and not layout.started(c.split(".")[1]))
        ]  # fmt: skip
        if fixed:
            shown = ", ".join(fixed[:4]) + (" ..." if len(fixed) > 4 else "")
            raise UserError(
                f"{layout.root} was started with another config (differs in {shown}); rerun with the same recipe and "
                f"overrides (see {path}), or use another --out-dir"
            )
        write = bool(changed)
        record["history"] = [*old.get("history", []), old.get("argv")]
    accelerator.wait_for_everyone()
    if write and accelerator.is_main_process:
        write_json(path, record)
    accelerator.wait_for_everyone()


def check_out_dir(root: Path) -> None:
    """`--out-dir` must be a directory this process can create and write: checked by doing it, after every other
    check (a directory made for a failed check is removed again)."""
    if root.exists() and not root.is_dir():
        raise UserError(f"--out-dir {root} is a file, not a directory; choose another --out-dir")
    made = [p for p in [root, *root.parents] if not p.exists()]
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
    except OSError as e:
        for p in made:
            with contextlib.suppress(OSError):
                p.rmdir()
        reason = e.strerror or str(e)
        raise UserError(f"--out-dir {root} cannot be written ({reason}); choose a writable --out-dir") from None


def check_data(config: Config, stages: Sequence[str]) -> None:
    """The data must exist and have no more classes than the classifier, before the first step (a label out of
    range would otherwise fail minutes into training)."""
    if not any(STAGES.get(s).uses_data for s in stages):
        return
    from dslim.data import dataset_classes

    classes = dataset_classes(config.data)
    if classes > config.model.num_classes:
        raise UserError(
            f"the data in {config.data.root} has {classes} classes but --model.num-classes is "
            f"{config.model.num_classes}; set --model.num-classes {classes}"
        )


def run_pipeline(
    config: Config,
    out_dir: str | Path,
    *,
    recipe: str,
    argv: Sequence[str] | None = None,
    stages: Sequence[str] = (),
    from_: str | Path | None = None,
) -> Path:
    """Run the selected stages (default: the recipe's pipeline) in `out_dir`; returns the run directory."""
    layout = RunLayout(out_dir)
    selected = select_stages(config, stages)
    validate(config, selected)
    source = None if from_ is None else Path(from_)
    if source is not None and not source.is_file():
        raise UserError(f"--from {from_}: no such file (give a stage's model.safetensors)")
    check_data(config, selected)
    check_out_dir(layout.root)
    acc = make_accelerator(config.mixed_precision, layout.root, config.tensorboard)
    layout.root.mkdir(parents=True, exist_ok=True)
    if acc.is_main_process:
        layout.sweep()
    acc.wait_for_everyone()
    write_config(layout, config, recipe, sys.argv if argv is None else argv, acc)
    if config.tensorboard:
        acc.init_trackers("tensorboard")
    metrics = MetricsLog(layout.metrics, acc)
    order = stage_order(config)
    for name in selected:
        stage = STAGES.get(name)
        if layout.finished(name):
            acc.print(f"{name}: done ({layout.marker(name)}), skipped")
            continue
        start = source or (layout.supernet_before(order, name) if "supernet" in stage.reads else None)
        source = None
        if start is not None:
            acc.print(f"{name}: starting from {start}")
        net, meta = load_supernet(start, arch_of(config.model)) if start is not None else (None, {})
        ctx = StageContext(
            stage=stage,
            settings=getattr(config.stages, name),
            config=config,
            recipe=recipe,
            layout=layout,
            accelerator=acc,
            metrics=metrics,
            calibrate_batches=calibration_batches(config),
            input=net,
            input_meta=meta,
            subnet_files=layout.named_subnets(order) if "subnets" in stage.reads else {},
        )
        set_seed(config.seed)  # a stage's random initialization and draws depend on the seed alone
        stage.run(ctx)
        acc.free_memory()
    acc.end_training()
    return layout.root
