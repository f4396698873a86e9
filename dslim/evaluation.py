"""Accuracy and cost of subnets, the `eval.json` report and the accuracy-vs-MACs (Pareto) plot.

Accuracy is reduced as `(correct, total)` sums across processes, never gathered per sample: the evaluation
loader covers each image exactly once over all shards, with no padding, so the sums are exact. Each batch runs
through every subnet in turn, so the evaluation data is read once however many subnets are evaluated.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import torch

from dslim.checkpoint import atomic_write
from dslim.complexity import measure
from dslim.config import Config
from dslim.errors import UserError
from dslim.models.base import Supernet
from dslim.subnet import Subnet

T = TypeVar("T")


def progress(items: Iterable[T], description: str, total: int | None, accelerator=None) -> Iterator[T]:  # type: ignore[no-untyped-def]
    """A rich progress bar on stderr (stdout stays clean for `--json`), shown by the main process only."""
    from rich.console import Console
    from rich.progress import track

    main = accelerator is None or accelerator.is_main_process
    yield from track(items, description, total=total, console=Console(stderr=True), disable=not main, transient=True)


def evaluate(
    supernet: Supernet,
    subnets: Mapping[str, Subnet],
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    input_size: int,
    accelerator=None,  # type: ignore[no-untyped-def]
    max_batches: int | None = None,
) -> list[dict]:
    """One row `{subnet, macs, params, top1, top5}` per subnet; top-1/top-5 in percent over the whole loader.

    `supernet` is the unwrapped model, in eval mode for the loop (its mode and subnet are restored after).
    `max_batches` stops each process after that many batches (a quick look, not a result to report).
    """
    device = next(supernet.parameters()).device
    costs = {name: measure(supernet, input_size, subnet) for name, subnet in subnets.items()}
    counts = torch.zeros(len(subnets), 3, dtype=torch.long, device=device)  # correct@1, correct@5, total
    was_training, previous = supernet.training, supernet.subnet
    total = len(loader) if hasattr(loader, "__len__") else None
    if max_batches is not None:
        total = max_batches if total is None else min(total, max_batches)
    autocast = accelerator.autocast() if accelerator is not None else torch.autocast(device.type, enabled=False)
    try:
        supernet.eval()
        with torch.no_grad(), autocast:
            batches = itertools.islice(loader, max_batches)
            for images, labels in progress(batches, f"evaluating {len(subnets)} subnets", total, accelerator):
                images, labels = images.to(device, non_blocking=True), labels.to(device).view(-1)
                for i, subnet in enumerate(subnets.values()):
                    supernet.set_subnet(subnet)
                    logits = supernet(images)
                    top = logits.topk(min(5, logits.shape[1]), dim=1).indices
                    hit = top == labels[:, None]
                    counts[i, 0] += hit[:, 0].sum()
                    counts[i, 1] += hit.any(dim=1).sum()
                    counts[i, 2] += labels.numel()
    finally:
        supernet.train(was_training)
        if previous is not None:
            supernet.set_subnet(previous)
    if accelerator is not None and accelerator.num_processes > 1:
        counts = accelerator.reduce(counts, reduction="sum")
    counts = counts.cpu()
    if subnets and counts[0, 2] == 0:
        raise UserError("the evaluation split is empty: no images to evaluate")
    return [
        {
            "subnet": name,
            "macs": costs[name].macs,
            "params": costs[name].params,
            "top1": 100.0 * int(c[0]) / int(c[2]),
            "top5": 100.0 * int(c[1]) / int(c[2]),
        }
        for name, c in zip(subnets, counts)
    ]


def run_evaluation(
    supernet: Supernet,
    config: Config,
    names: Sequence[str] = (),
    *,
    accelerator=None,  # type: ignore[no-untyped-def]
    max_batches: int | None = None,
    calibrate_batches: int | None = None,
) -> list[dict]:
    """What the `evaluate` stage and command compute: named subnets, calibrated if they must be, evaluated.

    `names` default to `config.stages.evaluate.subnets`, else every named subnet. With calibrated BatchNorm, a
    subnet without statistics (any width of a universally slimmable net) is first calibrated on
    `calibrate_batches` (default `config.stages.evaluate.calibrate_batches`) training batches; the statistics stay
    in `supernet`.
    """
    from dslim.calibration import calibrate_missing, shard_of
    from dslim.data import build_loader

    names = list(names) or list(config.stages.evaluate.subnets) or list(supernet.named_subnets())
    subnets = {name: supernet.resolve(name) for name in names}
    calibrate_missing(supernet, config, subnets, accelerator=accelerator, num_batches=calibrate_batches)
    size = config.model.input_size
    loader = build_loader(config.data, "val", size, seed=config.seed, **shard_of(accelerator))
    return evaluate(supernet, subnets, loader, size, accelerator, max_batches)


def write_report(rows: list[dict], out_dir: str | os.PathLike, dynamic: dict | None = None) -> dict:
    """Write `out_dir/eval.json` (`{"subnets": rows, "dynamic": ...}`, atomically) and `out_dir/pareto.png`."""
    out_dir = Path(out_dir)
    report: dict = {"subnets": rows}
    if dynamic is not None:
        report["dynamic"] = dynamic
    text = json.dumps(report, indent=2) + "\n"
    atomic_write(out_dir / "eval.json", lambda tmp: Path(tmp).write_text(text))
    plot_pareto({out_dir.resolve().name: report}, out_dir / "pareto.png")
    return report


def plot_pareto(runs: Mapping[str, dict], path: str | os.PathLike) -> None:
    """Top-1 against MACs, one curve per run (`label -> eval.json` content); a star marks a dynamic model."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.8), dpi=120)
    ax = fig.add_subplot()
    for i, (label, report) in enumerate(runs.items()):
        color = f"C{i % 10}"
        rows = sorted(report.get("subnets", []), key=lambda r: r["macs"])
        ax.plot([r["macs"] / 1e6 for r in rows], [r["top1"] for r in rows], "o-", color=color, label=label, ms=4)
        dynamic = report.get("dynamic")
        if dynamic is not None:
            ax.plot(dynamic["macs_mean"] / 1e6, dynamic["top1"], "*", color=color, ms=14, mec="black",
                    label=f"{label} (dynamic)")  # fmt: skip
    ax.set_xlabel("MACs (M)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(True, alpha=0.3)
    if runs:
        ax.legend(loc="lower right")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def evaluate_dynamic(
    supernet: Supernet,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    input_size: int,
    accelerator=None,  # type: ignore[no-untyped-def]
    max_batches: int | None = None,
) -> dict:
    """Per-input routing as deployed (`forward_dynamic`): top-1/top-5, mean routed MAdds, route histogram.

    An image's MAdds are those of its route (the gate's own 1x1 conv included); `macs_mean` averages them over
    the evaluation images, as DS-Net reports a dynamic model.
    """
    from dslim.methods.gate import route_macs

    device = next(supernet.parameters()).device
    routes = supernet.routes()
    names = {s: n for n, s in supernet.named_subnets().items()}
    macs = route_macs(supernet, input_size).to(torch.float64)
    counts = torch.zeros(3 + len(routes), dtype=torch.float64, device=device)  # top-1, top-5, total, per route
    was_training = supernet.training
    total = len(loader) if hasattr(loader, "__len__") else None
    try:
        supernet.eval()
        with torch.no_grad():
            batches = itertools.islice(loader, max_batches)
            for images, labels in progress(batches, "evaluating the dynamic model", total, accelerator):
                images, labels = images.to(device, non_blocking=True), labels.to(device).view(-1)
                logits, route = supernet.forward_dynamic(images)
                hit = logits.topk(min(5, logits.shape[1]), dim=1).indices == labels[:, None]
                counts[0] += hit[:, 0].sum()
                counts[1] += hit.any(dim=1).sum()
                counts[2] += labels.numel()
                counts[3:] += torch.bincount(route, minlength=len(routes)).to(counts.dtype)
    finally:
        supernet.train(was_training)
    if accelerator is not None and accelerator.num_processes > 1:
        counts = accelerator.reduce(counts, reduction="sum")
    counts = counts.cpu()
    hist = counts[3:]
    gate = supernet.gate_block.gate
    return {
        "macs_mean": float((hist * macs).sum() / counts[2]),
        "params": measure(supernet, input_size, routes[-1]).params + gate.weight.numel(),
        "top1": 100.0 * float(counts[0] / counts[2]),
        "top5": 100.0 * float(counts[1] / counts[2]),
        "routes": {names.get(r, f"route-{i}"): int(n) for i, (r, n) in enumerate(zip(routes, hist.tolist()))},
        "route_macs": {names.get(r, f"route-{i}"): int(m) for i, (r, m) in enumerate(zip(routes, macs.tolist()))},
    }
