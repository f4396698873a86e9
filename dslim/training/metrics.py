"""What a run logs: `metrics.jsonl` (and the experiment trackers, `dslim.training.trackers`), and the progress bars
on the terminal."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from accelerate import Accelerator

from dslim.io.atomic import append_line, write_text
from dslim.io.readers import METRICS_RECORD, parse, read_text
from dslim.training.trackers import RunSteps, log_table, tracker_values

MAX_LOG_BYTES = 2**30
"""The largest metrics.jsonl read back (a line per logged step: long ImageNet runs stay far below)."""


class MetricsLog:
    """`metrics.jsonl` (one JSON object per line, main process only) and the accelerator's trackers, if any.

    A line cut short by a crash is dropped when the log is opened again, and a resumed stage first drops what it
    logged after its checkpoint, so the file always parses and holds each step once.
    """

    def __init__(self, path: str | os.PathLike, accelerator: Accelerator) -> None:
        self.path, self.accelerator = Path(path), accelerator
        self.steps = RunSteps()
        if accelerator.is_main_process and self.path.is_file():
            text = self._text()
            if text and not text.endswith("\n"):
                text = text[: text.rfind("\n") + 1]
                write_text(self.path, text)
            lines = text.splitlines()
            self.steps = RunSteps([parse(s, f"{self.path} line {i + 1}", METRICS_RECORD) for i, s in enumerate(lines)])  # type: ignore[misc]

    def _text(self) -> str:
        return read_text(self.path, "metrics log", max_bytes=MAX_LOG_BYTES)

    def rewind(self, stage: str, step: int) -> None:
        """Forget the step and epoch records of `stage` after optimizer step `step` (a resume redoes them); a line
        damaged in the middle of the log is refused, naming it (the log is the run's history)."""
        if not self.accelerator.is_main_process or not self.path.is_file():
            return
        lines = self._text().splitlines(keepends=True)
        records = [parse(line, f"{self.path} line {i + 1}", METRICS_RECORD) for i, line in enumerate(lines)]
        kept = [line for line, record in zip(lines, records) if not _after(record, stage, step)]  # type: ignore[arg-type]
        if len(kept) != len(lines):
            write_text(self.path, "".join(kept))

    def write(self, record: dict) -> None:
        if not self.accelerator.is_main_process:
            return
        append_line(self.path, json.dumps(record))
        step = self.steps.step(record)
        if self.accelerator.trackers:
            self.accelerator.log(tracker_values(record), step=step)
            if record.get("kind") == "eval":
                log_table(self.accelerator, record, step)


def _after(record: dict, stage: str, step: int) -> bool:
    return record.get("stage") == stage and record.get("kind") in ("step", "epoch") and record.get("step", 0) > step


def progress_bars(enabled: bool):  # type: ignore[no-untyped-def]
    """The loop's progress display: epochs and steps, with the latest loss, learning rate and throughput."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        disable=not enabled,
        transient=False,
    )


def mean_over(sums: dict[str, list], accelerator: Accelerator) -> dict[str, float]:
    """Means over the steps that logged each value (`{name: [sum, steps]}`) and over processes (a collective: every
    process calls it at the same steps, with the same names, as methods log the same values on every process)."""
    if not sums:
        return {}
    names = sorted(sums)
    stacked = torch.stack([torch.as_tensor(sums[k][0], device=accelerator.device).float() for k in names])
    reduced = accelerator.reduce(stacked, "mean").tolist()
    return {k: round(float(v) / sums[k][1], 6) for k, v in zip(names, reduced)}


def summary_line(stage: str, s: dict, epochs: int, img_s: float) -> str:
    """An epoch's summary as printed: loss, throughput, time and each top-1 it measured."""
    extra = "  ".join(f"{k} {v:.2f}" for k, v in s.items() if k.startswith("top1"))
    loss = s.get("loss", float("nan"))
    return f"{stage} epoch {s['epoch']}/{epochs}: loss {loss:.4f}  {img_s:,.0f} img/s  {s['seconds']:.1f} s" + (
        f"  | {extra}" if extra else ""
    )
