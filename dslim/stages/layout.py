"""The run directory: where every file of a run lives, which stages are finished, and their named subnets.

`dslim.stages.run` reads a run back for the commands (config, latest supernet, named subnets).

D/config.json                {"config": asdict(Config), "recipe", "argv", "versions", "history"}
D/metrics.jsonl              one JSON object per logged step, epoch and evaluation, all stages
D/<stage>/model.safetensors  a `supernet` artifact: written last and atomically, it marks the stage done
D/<stage>/ema.safetensors    beside it, a training stage's EMA (`ema_decay`), or `weights.safetensors`, its trained
                             weights, when the EMA is the artifact (`ema_artifact`)
D/<stage>/subnets.json       a `subnets` artifact (named subnets)
D/<stage>/state/ckpt-<step>/ a training stage's resumable state
D/eval.json, D/pareto.png    the `report` (the evaluate stage)
D/<stage>/done.json          an `export` stage's marker, after its standalone models in D/<stage>/
"""

from __future__ import annotations

from pathlib import Path

from dslim.config import Config
from dslim.io.readers import SUBNETS, read_json
from dslim.stages.registry import STAGES
from dslim.subnet import Subnet


class RunLayout:
    """Paths of one run directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.config = self.root / "config.json"
        self.metrics = self.root / "metrics.jsonl"
        self.report = self.root / "eval.json"
        self.pareto = self.root / "pareto.png"

    def dir(self, stage: str) -> Path:
        return self.root / stage

    def state(self, stage: str) -> Path:
        return self.dir(stage) / "state"

    def path(self, stage: str, kind: str) -> Path:
        """Where `stage` writes an artifact of `kind`."""
        return {
            "supernet": self.dir(stage) / "model.safetensors",
            "ema": self.dir(stage) / "ema.safetensors",
            "weights": self.dir(stage) / "weights.safetensors",
            "subnets": self.dir(stage) / "subnets.json",
            "report": self.report,
            "export": self.dir(stage) / "done.json",
        }[kind]

    def marker(self, stage: str) -> Path:
        """The file whose existence means `stage` is finished."""
        return self.path(stage, STAGES.get(stage).writes[0])

    def finished(self, stage: str) -> bool:
        return self.marker(stage).exists()

    def started(self, stage: str) -> bool:
        return self.finished(stage) or self.dir(stage).exists()

    def supernet_before(self, order: list[str], stage: str | None = None) -> Path | None:
        """The `supernet` artifact of the nearest finished stage before `stage` (None: the last one) in `order`."""
        earlier = order if stage is None else order[: order.index(stage)]
        for name in reversed(earlier):
            if "supernet" in STAGES.get(name).writes and self.path(name, "supernet").is_file():
                return self.path(name, "supernet")
        return None

    def named_subnets(self, order: list[str]) -> dict[str, dict]:
        """Every finished stage's named subnets, in pipeline order (a later stage's name wins)."""
        found: dict[str, dict] = {}
        for name in order:
            if "subnets" in STAGES.get(name).writes and self.path(name, "subnets").is_file():
                found.update(read_subnets(self.path(name, "subnets")))
        return found


def read_subnets(path: Path) -> dict[str, dict]:
    """A named-subnets file, checked: `{name: {"subnet": Subnet JSON, "macs": int, "params": int, ...}}`."""
    obj: dict = read_json(path, "named-subnets file", SUBNETS)  # type: ignore[assignment]
    for name, entry in obj.items():
        Subnet.from_json(entry["subnet"], f"{path}: {name!r}")
    return obj


def stage_order(config: Config) -> list[str]:
    """The recipe's pipeline, then every other registered stage (selectable with `--stages`)."""
    return list(config.pipeline) + [s for s in STAGES.names() if s not in config.pipeline]
