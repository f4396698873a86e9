"""The stage pipeline: supernet -> bn_recalibration -> gate -> evaluate (-> export), each a resumable unit.

A run directory (`--out-dir D`) holds:

    D/config.json                      {"config": asdict(Config), "recipe", "argv", "versions", "history"}
    D/metrics.jsonl                    one JSON object per logged step, epoch and evaluation, all stages
    D/supernet/model.safetensors       a stage's artifact: written last and atomically, it marks the stage done
    D/supernet/state/ckpt-<step>/      its resumable state (accelerate save_state + trainer.json + ema.safetensors)
    D/bn_recalibration/model.safetensors
    D/gate/model.safetensors           DS-Net stage II (its resumable state in D/gate/state/)
    D/eval.json, D/pareto.png          the evaluate stage (eval.json marks it done)
    D/export/<subnet>.safetensors      the optional export stage (export/done.json marks it done)

Rules:
- A finished stage is skipped; an unfinished one resumes from its newest checkpoint.
- A stage starts from the artifact of the nearest earlier finished stage; the first stage this invocation runs
  starts from `--from PATH` instead when given (a supernet artifact, e.g. another run's stage or an import).
- Re-running in the same directory with another config is refused, except for changes that cannot alter what is
  already computed: `pipeline`, settings that do not change results (`HARMLESS`), and the settings of stages that
  have not started. config.json then takes the new config and keeps the earlier argv in `history`.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import platform
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from dslim.checkpoint import SUPERNET_FORMAT, load_tensors, save_supernet
from dslim.config import Config, TrainConfig
from dslim.errors import UserError
from dslim.models import from_config
from dslim.models.base import Supernet
from dslim.subnet import Subnet
from dslim.trainer import MetricsLog, Trainer, make_accelerator, write_json

STAGES = ("supernet", "bn_recalibration", "gate", "evaluate", "export")
ARTIFACT = "model.safetensors"
HARMLESS = ("pipeline", "tensorboard", "data.workers", "data.cache_dir", "data.eval_batch_size")
"""Config fields that may change between invocations on one run directory: they cannot change any result."""


@dataclass
class Run:
    """What every stage of one invocation shares."""

    config: Config
    recipe: str
    dir: Path
    accelerator: Accelerator
    metrics: MetricsLog

    def loader(self, split: str, epoch: int = 0):  # type: ignore[no-untyped-def]
        """This process's shard of `split`, deterministic per (seed, epoch)."""
        from dslim.data import build_loader

        acc = self.accelerator
        return build_loader(self.config.data, split, self.config.model.input_size,  # type: ignore[arg-type]
                            shard_id=acc.process_index, num_shards=acc.num_processes, seed=self.config.seed,
                            epoch=epoch)  # fmt: skip

    def training_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Training batches (train augmentation) for as many epochs as asked for."""
        for epoch in itertools.count():
            yield from self.loader("train", epoch)

    def save(self, net: Supernet, stage: str, **extra: object) -> None:
        if self.accelerator.is_main_process:
            save_supernet(net, self.dir / stage / ARTIFACT, recipe=self.recipe, stage=stage,
                          input_size=self.config.model.input_size, **extra)  # fmt: skip
        self.accelerator.wait_for_everyone()


# -- the stages --------------------------------------------------------------------------------------------------
def default_eval_subnets(net: Supernet, names: Sequence[str]) -> dict[str, Subnet]:
    """`names` resolved, or the smallest and largest, called by their own names where they have one."""
    if names:
        return {name: net.resolve(name) for name in names}
    own = {subnet: name for name, subnet in net.named_subnets().items()}
    return {own.get(s, label): s for label, s in (("smallest", net.smallest()), ("largest", net.largest()))}


def epoch_evaluator(run: Run, trainer: Trainer, cfg: TrainConfig) -> Callable[[int], dict[str, float]]:
    """Top-1 of `cfg.eval_subnets` (of the EMA too) after each epoch; calibrated BN is calibrated on a copy."""
    from dslim.calibration import recalibrate
    from dslim.evaluation import evaluate

    subnets = default_eval_subnets(trainer.supernet, cfg.eval_subnets)
    acc, config = run.accelerator, run.config

    def evaluate_epoch(epoch: int) -> dict[str, float]:
        out = {}
        for prefix, model in (("", trainer.supernet), ("ema/", trainer.ema)):
            if model is None:
                continue
            if model.bn_mode == "calibrated":
                copy = from_config(config.model).to(acc.device)
                copy.load_state_dict(model.state_dict())
                recalibrate(copy, subnets, run.loader("train", epoch), config.stages.evaluate.calibrate_batches, acc)
                model = copy
            rows = evaluate(model, subnets, run.loader("val"), config.model.input_size, acc)
            out.update({f"top1/{prefix}{r['subnet']}": round(r["top1"], 3) for r in rows})
        return out

    return evaluate_epoch


def train_supernet(run: Run, net: Supernet | None) -> None:
    """Stage I: sandwich training of the whole supernet (S-Net, US-Net, DS-Net)."""
    from dslim.methods import sandwich_step

    cfg, acc = run.config.stages.supernet, run.accelerator
    if cfg.distill == "ieb" and cfg.ema_decay <= 0:
        raise UserError("--stages.supernet.distill ieb learns from an EMA teacher: set --stages.supernet.ema-decay")
    set_seed(run.config.seed)
    net = net if net is not None else from_config(run.config.model)
    trainer = Trainer(acc, net, cfg, stage="supernet", state_dir=run.dir / "supernet" / "state",
                      metrics=run.metrics, batch_size=run.config.data.batch_size, seed=run.config.seed)  # fmt: skip
    acc.print(f"supernet: {cfg.epochs} epochs, rule {cfg.rule}, distill {cfg.distill}, global batch "
              f"{trainer.global_batch}, peak lr {trainer.peak:.4g}")  # fmt: skip
    trainer.fit(sandwich_step, lambda epoch: run.loader("train", epoch), epoch_evaluator(run, trainer, cfg))
    run.save(trainer.supernet, "supernet")
    acc.free_memory()


def bn_recalibration(run: Run, net: Supernet | None) -> None:
    """BN statistics recomputed per subnet (DS-Net's BN reset, US-Net's calibration), reduced across processes."""
    from dslim.calibration import recalibrate

    cfg, acc = run.config.stages.bn_recalibration, run.accelerator
    net = require(net, "bn_recalibration").to(acc.device)
    subnets = {name: net.resolve(name) for name in cfg.subnets} or net.named_subnets()
    recalibrate(net, subnets, run.training_batches(), cfg.batches, acc)
    run.save(net, "bn_recalibration", calibrated=list(subnets))


def train_gate(run: Run, net: Supernet | None) -> None:
    """DS-Net stage II: only the gate learns (SGS + MAdds penalty), the supernet frozen with BN in eval mode."""
    from dslim.methods.gate import freeze_all_but_gate, gate_method

    cfg, acc, size = run.config.stages.gate, run.accelerator, run.config.model.input_size
    net = require(net, "gate")
    if not hasattr(net, "forward_dynamic"):
        raise UserError(f"the gate stage needs a supernet with a gate (ds_mobilenet_v1), not {net.arch}")
    set_seed(run.config.seed)
    freeze_all_but_gate(net)
    method = gate_method(net, size)
    trainer = Trainer(acc, net, cfg, stage="gate", state_dir=run.dir / "gate" / "state", metrics=run.metrics,
                      batch_size=run.config.data.batch_size, seed=run.config.seed)  # fmt: skip
    acc.print(f"gate: {cfg.epochs} epochs over {len(net.routes())} routes, global batch {trainer.global_batch}")

    def evaluate_epoch(epoch: int) -> dict[str, float]:
        from dslim.evaluation import evaluate_dynamic

        d = evaluate_dynamic(trainer.supernet, run.loader("val"), size, acc)
        return {"top1/dynamic": round(d["top1"], 3), "macs_M/dynamic": round(d["macs_mean"] / 1e6, 3)}

    trainer.fit(method, lambda epoch: run.loader("train", epoch), evaluate_epoch)
    run.save(trainer.supernet.requires_grad_(True), "gate")
    acc.free_memory()


def has_gate(run: Run) -> bool:
    return "gate" in run.config.pipeline


def evaluate_stage(run: Run, net: Supernet | None) -> None:
    """Accuracy and cost of the evaluation subnets (and of the dynamic model after a gate stage):
    `eval.json` and `pareto.png` in the run directory."""
    from dslim.evaluate import print_table
    from dslim.evaluation import evaluate_dynamic, run_evaluation, write_report

    acc = run.accelerator
    net = require(net, "evaluate").to(acc.device)
    rows = run_evaluation(net, run.config, accelerator=acc)
    dynamic = None
    if has_gate(run):
        dynamic = evaluate_dynamic(net, run.loader("val"), run.config.model.input_size, acc)
    run.metrics.write({"kind": "eval", "stage": "evaluate", "subnets": rows, "dynamic": dynamic})
    if acc.is_main_process:
        write_report(rows, run.dir, dynamic)
        title = f"{run.recipe}: {run.config.model.arch} at {run.config.model.input_size}px"
        print_table(rows + ([{"subnet": "dynamic", "macs": round(dynamic["macs_mean"]), **dynamic}] if dynamic else []),
                    title)  # fmt: skip
        if dynamic:
            acc.print("routes: " + ", ".join(f"{k} {v}" for k, v in dynamic["routes"].items()))
    acc.wait_for_everyone()


def export_stage(run: Run, net: Supernet | None) -> None:
    """Subnets as standalone models with physically sliced weights (`dslim.load_subnet` reads them)."""
    from dslim.calibration import calibrate_missing
    from dslim.deploy import save_subnet

    acc = run.accelerator
    net = require(net, "export").to(acc.device)
    names = run.config.stages.export.subnets or tuple(net.named_subnets())
    subnets = {name: net.resolve(name) for name in names}
    calibrate_missing(net, run.config, subnets, accelerator=acc)
    if acc.is_main_process:
        for name, subnet in subnets.items():
            save_subnet(net, subnet, run.dir / "export" / f"{name}.safetensors", run.config.model.input_size)
        if has_gate(run):
            from dslim.deploy import extract_dynamic

            path = run.dir / "export" / "dynamic.safetensors"
            save_subnet(extract_dynamic(net), None, path, run.config.model.input_size)
        write_json(run.dir / "export" / "done.json", {"subnets": list(subnets)})
    acc.wait_for_everyone()


RUNNERS: dict[str, Callable[[Run, Supernet | None], None]] = {
    "supernet": train_supernet,
    "bn_recalibration": bn_recalibration,
    "gate": train_gate,
    "evaluate": evaluate_stage,
    "export": export_stage,
}


def require(net: Supernet | None, stage: str) -> Supernet:
    if net is None:
        raise UserError(f"stage {stage} needs a trained supernet: run the earlier stages first, or give --from PATH")
    return net


# -- the run directory -------------------------------------------------------------------------------------------
def marker(run_dir: Path, stage: str) -> Path:
    """The file whose existence means `stage` is finished."""
    return {"evaluate": run_dir / "eval.json", "export": run_dir / "export" / "done.json"}.get(
        stage, run_dir / stage / ARTIFACT
    )


def started(run_dir: Path, stage: str) -> bool:
    return marker(run_dir, stage).exists() or (run_dir / stage).exists()


def stage_order(config: Config) -> list[str]:
    """The recipe's pipeline, then any other known stage (selectable with `--stages`)."""
    return list(config.pipeline) + [s for s in STAGES if s not in config.pipeline]


def select_stages(config: Config, requested: Sequence[str]) -> list[str]:
    unknown = [s for s in requested if s not in STAGES]
    if unknown:
        raise UserError(f"unknown stage(s) {unknown} in --stages; available: {', '.join(STAGES)}")
    if not requested:
        return list(config.pipeline)
    return [s for s in stage_order(config) if s in requested]


def previous_artifact(run_dir: Path, config: Config, stage: str) -> Path | None:
    order = stage_order(config)
    for earlier in reversed(order[: order.index(stage)]):
        path = run_dir / earlier / ARTIFACT
        if path.is_file():
            return path
    return None


def load_artifact(config: Config, path: Path) -> Supernet:
    """This run's supernet (built from its config) with the weights and BN statistics of `path`."""
    tensors, meta = load_tensors(path)
    net = from_config(config.model)
    if meta.get("format") != SUPERNET_FORMAT:
        raise UserError(f"{path} is not a dslim supernet artifact (format {meta.get('format')!r})")
    if meta.get("arch") != net.arch:
        raise UserError(f"{path} holds a {meta.get('arch')}, but this run's model is {net.arch}")
    try:
        missing, unexpected = net.load_state_dict(tensors, strict=False)
    except RuntimeError as e:
        detail = str(e).strip().splitlines()[-1].strip()
        raise UserError(f"{path} does not fit this run's {net.arch} ({detail}); check the --model settings") from None
    if missing or unexpected:
        raise UserError(
            f"{path} does not fit this run's {net.arch}: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    return net


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


def write_config(run_dir: Path, config: Config, recipe: str, argv: Sequence[str], accelerator: Accelerator) -> None:
    """Record the resolved config, or check it against the one already recorded (see the module's rules).

    Every process reads before any writes and meets the same barriers, so all of them refuse, or none does.
    """
    path = run_dir / "config.json"
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
            and not (c.startswith("stages.") and not started(run_dir, c.split(".")[1]))
        ]  # fmt: skip
        if fixed:
            shown = ", ".join(fixed[:4]) + (" ..." if len(fixed) > 4 else "")
            raise UserError(
                f"{run_dir} was started with another config (differs in {shown}); rerun with the same recipe and "
                f"overrides (see {path}), or use another --out-dir"
            )
        write = bool(changed)
        record["history"] = [*old.get("history", []), old.get("argv")]
    accelerator.wait_for_everyone()
    if write and accelerator.is_main_process:
        write_json(path, record)
    accelerator.wait_for_everyone()


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
    run_dir = Path(out_dir)
    selected = select_stages(config, stages)
    source = None if from_ is None else Path(from_)
    if source is not None and not source.is_file():
        raise UserError(f"--from {from_}: no such file (give a stage's model.safetensors)")
    acc = make_accelerator(config.mixed_precision, run_dir, config.tensorboard)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(run_dir, config, recipe, sys.argv if argv is None else argv, acc)
    if config.tensorboard:
        acc.init_trackers("tensorboard")
    run = Run(config, recipe, run_dir, acc, MetricsLog(run_dir / "metrics.jsonl", acc))
    for stage in selected:
        if marker(run_dir, stage).exists():
            acc.print(f"{stage}: done ({marker(run_dir, stage)}), skipped")
            continue
        start = source or previous_artifact(run_dir, config, stage)
        source = None
        if start is not None:
            acc.print(f"{stage}: starting from {start}")
        RUNNERS[stage](run, None if start is None else load_artifact(config, start))
    acc.end_training()
    return run_dir
