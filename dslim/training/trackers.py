"""Experiment trackers, through Accelerate's: TensorBoard, Weights & Biases, MLflow and trackio (`--log-with`).

What they get is what `metrics.jsonl` gets (`MetricsLog` hands each record to `tracker_values`): every loss term a
method logs and every learning rate (`<stage>/loss`, `<stage>/lr`, `<stage>/lr/<set>`, `<stage>/img_s`), each
epoch's summary with the per-subnet validation top-1 (`<stage>/epoch/top1/<subnet>`), and the final evaluation
(`evaluate/top1/<subnet>`, `top5`, `macs`, `params`, the dynamic model's too), also as a table (TensorBoard's
text tab, a W&B table). The resolved config is each run's parameters (flattened: `stages.supernet.optim.lr`),
except in TensorBoard, whose hyper-parameter view needs final metrics; it is in the run's config.json anyway.

Steps: each stage counts its optimizer steps from 0, but W&B drops any point logged at a step below one it has
seen, so trackers get the run's step: a stage's own step plus the last steps of the stages logged before it
(`RunSteps`), the same on resume. Projects and runs: the recipe names the project (a W&B or trackio project, an
MLflow experiment), the run directory names the run; TensorBoard writes to `<out-dir>/tensorboard/`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from dslim.errors import UserError

PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio"}
"""Each tracker and the package it needs."""


def resolve_trackers(names: Sequence[str]) -> list[str]:
    """The trackers `--log-with names` means (`all`: every one whose package is installed), checked before any
    work: a tracker whose package is missing is refused, naming the package and how to install it."""
    if "all" in names:
        found = [n for n, package in PACKAGES.items() if importlib.util.find_spec(package) is not None]
        if not found:
            raise UserError(f"--log-with all: no tracker is installed; pip install one of {', '.join(PACKAGES)}")
        return found
    chosen = list(dict.fromkeys(names))
    for name in chosen:
        if name not in PACKAGES:
            raise UserError(f"--log-with {name}: unknown tracker; choose from {', '.join(PACKAGES)} or all")
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise UserError(f"--log-with {name} needs the {PACKAGES[name]} package: pip install {PACKAGES[name]}")
    return chosen


def make_trackers(names: Sequence[str], root: Path, project: str):  # type: ignore[no-untyped-def]
    """Accelerate trackers for `names` (resolved), writing under the run directory `root`, in `project`."""
    from accelerate.tracking import MLflowTracker, TensorBoardTracker, TrackioTracker, WandBTracker

    run = root.resolve().name
    made = {
        "tensorboard": lambda: TensorBoardTracker("", root / "tensorboard"),
        "wandb": lambda: WandBTracker(project, name=run, dir=str(root)),
        "mlflow": lambda: MLflowTracker(experiment_name=project, run_name=run),
        "trackio": lambda: TrackioTracker(project, name=run),
    }
    return [made[n]() for n in names]


def flatten(obj: dict, prefix: str = "") -> dict[str, object]:
    """A nested config as `{"a.b.c": value}`, lists as strings: what every tracker takes as run parameters."""
    flat: dict[str, object] = {}
    for key, value in obj.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value) if isinstance(value, list) else value
    return flat


def start_trackers(accelerator, project: str, config: dict) -> None:  # type: ignore[no-untyped-def]
    """Start the accelerator's trackers, giving each (TensorBoard aside) the resolved `config` as parameters."""
    accelerator.init_trackers(project)
    for tracker in accelerator.trackers:
        if tracker.name != "tensorboard":
            tracker.store_init_configuration(flatten(config))


def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def tracker_values(record: dict) -> dict[str, float]:
    """The numbers of a metrics.jsonl record under tracker names (see the module's docstring)."""
    kind, stage = record.get("kind"), record.get("stage")
    prefix = f"{stage}/epoch" if kind == "epoch" else str(stage)
    values = {f"{prefix}/{k}": v for k, v in record.items() if k not in ("step", "epoch", "time") and _number(v)}
    if kind == "eval":
        rows = list(record.get("subnets") or [])
        if record.get("dynamic"):
            rows.append({**record["dynamic"], "subnet": "dynamic", "macs": record["dynamic"].get("macs_mean")})
        for row in rows:
            values.update({f"{prefix}/{k}/{row['subnet']}": row[k] for k in ("top1", "top5", "macs", "params")
                           if _number(row.get(k))})  # fmt: skip
    return values


def eval_table(record: dict) -> tuple[list[str], list[list]]:
    """The final evaluation as a table: columns and one row per subnet (and the dynamic model)."""
    rows = [[r["subnet"], r["macs"], r["params"], r["top1"], r["top5"]] for r in record.get("subnets") or []]
    dynamic = record.get("dynamic")
    if dynamic:
        rows.append(["dynamic", dynamic.get("macs_mean"), None, dynamic.get("top1"), dynamic.get("top5")])
    return ["subnet", "macs", "params", "top1", "top5"], rows


def log_table(accelerator, record: dict, step: int) -> None:  # type: ignore[no-untyped-def]
    """The evaluation table, to the trackers that show tables: W&B (a table), TensorBoard (text, as markdown)."""
    columns, rows = eval_table(record)
    name = f"{record.get('stage')}/table"
    for tracker in accelerator.trackers:
        if tracker.name == "wandb":
            tracker.log_table(name, columns=columns, data=rows, step=step)
        elif tracker.name == "tensorboard":
            lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            lines += ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in rows]
            tracker.log({name: "\n".join(lines)}, step=step)


class RunSteps:
    """The run's step of each record: a stage's own step plus the last steps of the stages logged before it (each
    stage counts from 0; W&B keeps only increasing steps). Records without a step (an evaluation, a search) get the
    run's latest step."""

    def __init__(self, records: Sequence[dict] = ()) -> None:
        self.ends: dict[str, int] = {}  # each stage's last step, in the order the stages were first logged
        for record in records:
            self.step(record)

    def step(self, record: dict) -> int:
        stage, step = str(record.get("stage")), record.get("step")
        if record.get("kind") not in ("step", "epoch") or not _number(step):
            return sum(self.ends.values())
        self.ends.setdefault(stage, 0)
        before = list(self.ends)[: list(self.ends).index(stage)]
        self.ends[stage] = max(self.ends[stage], int(step))  # type: ignore[arg-type]
        return sum(self.ends[s] for s in before) + int(step)  # type: ignore[arg-type]
