"""Running a pipeline: the selected stages in order, each a resumable unit reading the previous stage's artifact.

Rules:
- Everything that can refuse the command is checked before anything is written (`dslim.stages.preflight`): the
  run directory and its config.json are made only once the run is accepted. If the command then fails before any
  stage has started (a file that cannot be written, a signal), the run directory it made is removed again.
- A finished stage is skipped; an unfinished one resumes from its newest checkpoint.
- A stage that reads a supernet starts from the artifact of the nearest earlier finished stage that wrote one; the
  first selected stage starts from `--from PATH` instead when given (a supernet artifact, e.g. another run's stage
  or an import). When that stage is already finished, `--from` is not used, and the command says so: a run goes on
  from its own progress, as Accelerate's `load_state` or timm's `--resume` would, and re-running a finished command
  stays a no-op rather than an error.
- Re-running in the same directory with another config is refused as `dslim.stages.record` says.
- A signal outside a training loop (BN re-estimation, evaluation, export) ends the stage with one line naming it.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from dslim.config import Config, TrainConfig, config_json, option_name, validate_fields
from dslim.errors import Stopped, Terminated, UserError, signal_name
from dslim.io.artifacts import load_supernet
from dslim.io.outputs import MARKER, check_run_dir, mark, sweep
from dslim.models import from_config
from dslim.models.registry import arch_of
from dslim.stages.context import StageContext, batching
from dslim.stages.evaluate import calibration_batches
from dslim.stages.layout import RunLayout, stage_order
from dslim.stages.preflight import check_data, check_inputs, start_from
from dslim.stages.record import check_record, write_record
from dslim.stages.registry import STAGES
from dslim.training import MetricsLog, make_accelerator
from dslim.training.trackers import make_trackers, resolve_trackers, start_trackers


def select_stages(config: Config, requested: Sequence[str]) -> list[str]:
    """The stages to run: the recipe's pipeline, or the requested ones in pipeline order."""
    for name in requested:
        STAGES.get(name)
    if not requested:
        return list(config.pipeline)
    return [s for s in stage_order(config) if s in requested]


def validate(config: Config, stages: Sequence[str] | None = None, where: str = "config") -> None:
    """Everything that can be checked before any work: field bounds, the trackers' packages, the model, and each
    stage's own checks (of `stages`, default the pipeline's) against that model. Builds the model on the `meta`
    device: free."""
    validate_fields(config)
    resolve_trackers(config.log_with)
    for name in config.pipeline:
        try:
            STAGES.get(name)
        except UserError as e:
            raise UserError(f"{where}: {e}") from None
    with torch.device("meta"):
        net = from_config(config.model)
    for name in config.pipeline if stages is None else stages:
        stage, settings = STAGES.get(name), getattr(config.stages, name)
        if isinstance(settings, TrainConfig):
            check_training(settings, name)
        if stage.check is not None:
            stage.check(config, net, settings)


def check_training(cfg: TrainConfig, stage: str) -> None:
    """Settings of the shared training loop that contradict each other."""
    option = lambda name: option_name(f"stages.{stage}.{name}")  # noqa: E731
    if cfg.ema_artifact and not cfg.ema_decay:
        raise UserError(f"{option('ema_artifact')} hands on the EMA of the weights: set {option('ema_decay')}")
    if cfg.global_batch and cfg.grad_accum != 1:
        raise UserError(f"{option('global_batch')} derives the accumulation: leave {option('grad_accum')} at 1")


def _make_run(layout: RunLayout, accelerator: Accelerator) -> list[Path]:
    """Make (and mark) the run directory; returns the folders made, deepest first."""
    made = [p for p in (layout.root, *layout.root.parents) if not p.exists()]
    if accelerator.is_main_process:
        layout.root.mkdir(parents=True, exist_ok=True)
        if not (layout.root / MARKER).is_file():
            mark(layout.root, "run")
    accelerator.wait_for_everyone()
    return made


def _unmake_run(layout: RunLayout, made: list[Path]) -> None:
    """Undo `_make_run` and the record of a new run in which no stage has started: only dslim's own files, and only
    the folders this command made, if they are empty then."""
    if any(layout.started(s) for s in STAGES.names()):
        return
    for own in (layout.metrics, layout.config, layout.root / MARKER):
        own.unlink(missing_ok=True)
    for folder in made:
        with contextlib.suppress(OSError):
            folder.rmdir()


def run_pipeline(
    config: Config,
    out_dir: str | Path,
    *,
    recipe: str,
    argv: Sequence[str] | None = None,
    stages: Sequence[str] = (),
    from_: str | Path | None = None,
    new_classifier: bool = False,
) -> Path:
    """Run the selected stages (default: the recipe's pipeline) in `out_dir`; returns the run directory.

    `new_classifier`: `--from`'s artifact has another number of classes; start from it with a new classifier."""
    layout = RunLayout(out_dir)
    selected = select_stages(config, stages)
    validate(config, selected)
    if new_classifier and from_ is None:
        raise UserError("--from-new-classifier replaces the classifier of the --from artifact: give --from F")
    resumed = check_run_dir(layout.root)
    record = check_record(layout, config, recipe, sys.argv if argv is None else argv)
    trackers = resolve_trackers(config.log_with)  # a missing package refused before any work
    acc = make_accelerator(config.mixed_precision, layout.root)
    todo = [s for s in selected if not layout.finished(s)]
    for name in todo:  # a global batch these processes cannot split is refused before any work
        batching(getattr(config.stages, name), config.data.batch_size, name, acc.num_processes)
    check_data(config, todo, acc)
    seeded = from_ is not None and bool(todo) and todo[0] == selected[0]
    start = (*start_from(from_, config, new_classifier, acc), from_) if seeded else None  # type: ignore[arg-type]
    check_inputs(config, todo, layout, seeded)
    if from_ is not None and not seeded:
        acc.print(f"--from {from_} not used: stage {selected[0]} is already finished in {layout.root} (a run goes on "
                  "from its own progress; give another --out-dir to start from it)")  # fmt: skip

    made = _make_run(layout, acc)  # accepted: the first byte is written here
    try:
        if acc.is_main_process:
            sweep([layout.root, *(p for s in STAGES.names() for p in (layout.dir(s), layout.state(s)))])
            if record is not None:
                write_record(layout, record)
        acc.wait_for_everyone()
        _run_stages(config, selected, layout, acc, recipe, start, trackers)
    except BaseException:
        if acc.is_main_process and not resumed:
            _unmake_run(layout, made)
        raise
    return layout.root


def _run_stage(name: str, config: Config, layout: RunLayout, acc: Accelerator, recipe: str, metrics: MetricsLog,
               start: tuple | None) -> None:  # fmt: skip
    """Run stage `name`, from `start` (`--from`'s supernet, metadata and path) or the run's own artifacts."""
    stage, order = STAGES.get(name), stage_order(config)
    net, meta, source = start if start is not None else (None, {}, None)
    if start is None and "supernet" in stage.reads:
        source = layout.supernet_before(order, name)
        net, meta = load_supernet(source, arch_of(config.model)) if source is not None else (None, {})
    if source is not None:
        acc.print(f"{name}: starting from {source}")
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


def _run_stages(config: Config, selected: list[str], layout: RunLayout, acc: Accelerator, recipe: str,
                start: tuple | None, trackers: list[str]) -> None:  # fmt: skip
    """Run each unfinished stage of `selected`; `start`: `(supernet, metadata, path)` of `--from`, for the first;
    `trackers`: the `--log-with` names, made here, once the run directory exists (a refused run writes nothing)."""
    if trackers:
        project = Path(recipe).stem
        acc.log_with = make_trackers(trackers, layout.root, project)  # what Accelerator(log_with=...) keeps
        start_trackers(acc, project, config_json(config))
    metrics = MetricsLog(layout.metrics, acc)
    for name in selected:
        if layout.finished(name):
            acc.print(f"{name}: done ({layout.marker(name)}), skipped")
            continue
        try:
            _run_stage(name, config, layout, acc, recipe, metrics, start if name == selected[0] else None)
        except (KeyboardInterrupt, Terminated) as e:
            signum = Terminated.signum if isinstance(e, Terminated) else 2
            raise Stopped(f"{name} stopped by {signal_name(signum)}: run the same command again to redo it",
                          signum) from None  # fmt: skip
        acc.free_memory()
    acc.end_training()
