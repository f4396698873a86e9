"""AutoSlim's greedy slimming (Yu & Huang, "AutoSlim: Towards One-Shot Architecture Search for Channel Numbers").

Given a trained slimmable supernet, start at its largest subnet; at each step try every channel group one bin (one
choice) narrower, score each candidate, and keep the one that hurts least: the highest top-1, ties broken by the
lowest loss, then by group order. Whenever the MACs (or a latency, estimated from a table measured on the
target device) pass below a target, the subnet reached is that target's configuration. Layers tied by a residual
are one channel group, so they always move together.

The supernet's training is the sandwich rule with per-group random subnets (`dslim.methods.sandwich`, sampler
`groups`); scoring is held-out scoring (`dslim.evaluation.heldout`), data and files are the `search` stage's
(`dslim.stages.search`); this module is the search itself, for any supernet whose groups have choices (AutoSlim's
bins, DS-Net's stage widths), and its record: the trace, one `Step` per line, the search's checkpoint.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dslim.errors import UserError
from dslim.io import write_text
from dslim.subnet import Subnet


@dataclass(frozen=True)
class Score:
    """How a subnet does on the held-out images."""

    top1: float
    """Top-1 accuracy, percent."""
    loss: float
    """Mean cross-entropy."""

    def beats(self, other: Score) -> bool:
        return self.top1 > other.top1 or (self.top1 == other.top1 and self.loss < other.loss)


@dataclass(frozen=True)
class Step:
    """One point of the greedy path: the subnet reached, its cost and score, and what was tried to get there."""

    subnet: Subnet
    macs: int
    score: Score
    removed: str | None = None
    """The group made one bin narrower at this step (None: the start)."""
    candidates: tuple[tuple[str, int, Score], ...] = ()
    """Every candidate of the step: (group, MACs, score)."""

    def to_json(self, index: int) -> dict:
        return {"step": index, "removed": self.removed, "macs": self.macs, "top1": self.score.top1,
                "loss": self.score.loss, "subnet": self.subnet.to_json(),
                "candidates": [{"group": g, "macs": m, "top1": s.top1, "loss": s.loss}
                               for g, m, s in self.candidates]}  # fmt: skip

    @classmethod
    def from_json(cls, obj: dict) -> Step:
        candidates = tuple((c["group"], int(c["macs"]), Score(c["top1"], c["loss"])) for c in obj["candidates"])
        return cls(Subnet.from_json(obj["subnet"]), int(obj["macs"]), Score(obj["top1"], obj["loss"]),
                   obj["removed"], candidates)  # fmt: skip


Scorer = Callable[[Sequence[Subnet]], list[Score]]


def one_bin_less(subnet: Subnet, choices: Mapping[str, Sequence[int]]) -> dict[str, Subnet]:
    """Per group that can shrink: `subnet` with that group at its next narrower choice, the others unchanged."""
    out = {}
    for group, channels in subnet.items():
        narrower = [c for c in choices[group] if c < channels]
        if narrower:
            out[group] = Subnet.of({**dict(subnet.items()), group: max(narrower)}, subnet.blocks)
    return out


def greedy_step(current: Subnet, choices: Mapping[str, Sequence[int]], score: Scorer,
                macs: Callable[[Subnet], int]) -> Step | None:  # fmt: skip
    """The removal that hurts least, among one bin less in each group (None: every group is at its narrowest).

    `score` gets all candidates at once, so it can spread them over processes."""
    candidates = one_bin_less(current, choices)
    if not candidates:
        return None
    scores = score(list(candidates.values()))
    best = 0
    for i, s in enumerate(scores):
        if s.beats(scores[best]):
            best = i
    group = list(candidates)[best]
    tried = tuple((g, macs(c), s) for (g, c), s in zip(candidates.items(), scores))
    return Step(candidates[group], tried[best][1], scores[best], group, tried)


def greedy_slim(path: list[Step], choices: Mapping[str, Sequence[int]], score: Scorer, macs: Callable[[Subnet], int],
                stop_at: int, record: Callable[[Step], None] = lambda step: None,
                done: Callable[[Step], bool] = lambda step: True) -> list[Step]:  # fmt: skip
    """Continue `path` (its first step is the start) until its MACs are at most `stop_at` and `done(step)` holds
    (another budget, e.g. a latency), or nothing can shrink; `record` sees each new step as soon as it is made (the
    search's trace)."""
    while path[-1].macs > stop_at or not done(path[-1]):
        step = greedy_step(path[-1].subnet, choices, score, macs)
        if step is None:
            break
        record(step)
        path.append(step)
    return path


def follows(previous: Step, step: Step, choices: Mapping[str, Sequence[int]]) -> bool:
    """Whether `step` is `previous` with its removed group one bin narrower (a trace replayed on resume)."""
    return step.removed is not None and one_bin_less(previous.subnet, choices).get(step.removed) == step.subnet


def reached(
    path: Sequence[Step], targets: Sequence[float], cost: Callable[[Step], float] = lambda step: step.macs
) -> dict[float, int]:
    """Each target the path reaches -> index of the first step whose `cost` (MACs, or e.g. a latency) is at or
    below it."""
    out = {}
    for target in targets:
        found = next((i for i, step in enumerate(path) if cost(step) <= target), None)
        if found is not None:
            out[target] = found
    return out


def latency_name(prefix: str, ms: float) -> str:
    """`autoslim-3.2ms`: a latency target as a subnet name."""
    return f"{prefix}-{ms:g}ms"


def target_name(prefix: str, macs: float) -> str:
    """`autoslim-300M`, `autoslim-3G`, `autoslim-2.5M`: a target as a subnet name."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if macs >= scale:
            return f"{prefix}-{macs / scale:g}{unit}"
    return f"{prefix}-{macs:g}"


# -- the trace: the search's checkpoint ---------------------------------------------------------------------------
def read_trace(path: Path, start: Subnet, choices: dict[str, tuple[int, ...]]) -> tuple[list[Step], bool]:
    """The steps a killed search recorded, checked to follow one another; and whether its last line was torn (a
    kill in the middle of a write: that step is dropped and recomputed)."""
    if not path.is_file():
        return [], False
    lines = path.read_text().splitlines()
    steps, torn = [], False
    for i, line in enumerate(lines):
        try:
            step = Step.from_json(json.loads(line))
        except (ValueError, KeyError, TypeError, UserError):
            if i == len(lines) - 1:
                torn = True
                break
            raise UserError(f"{path}: line {i + 1} is damaged; delete {path.parent} to search again") from None
        ok = step.subnet == start if i == 0 else follows(steps[-1], step, choices)
        if not ok:
            raise UserError(f"{path}: step {i} does not follow from the one before with this model and its channel "
                            f"bins; delete {path.parent} to search again")  # fmt: skip
        steps.append(step)
    return steps, torn


def append_step(path: Path, step: Step, index: int) -> None:
    """Add step `index` to the trace at `path`, on disk before the search goes on."""
    with open(path, "a") as f:
        f.write(json.dumps(step.to_json(index)) + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_trace(path: Path, steps: Sequence[Step]) -> None:
    """The trace holding exactly `steps` (after a torn last line was dropped)."""
    write_text(path, "".join(json.dumps(s.to_json(i)) + "\n" for i, s in enumerate(steps)))
