"""Accuracy and cost of subnets, and of a dynamic model routing each image (`dslim.models.routing.Dynamic`).

Accuracy is reduced as `(correct, total)` sums across processes, never gathered per sample: the evaluation
loader covers each image exactly once over all shards, with no padding, so the sums are exact. Each batch runs
through every subnet in turn, so the evaluation data is read once however many subnets are evaluated.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Literal

import torch

from dslim.config import Config
from dslim.errors import UserError
from dslim.evaluation.calibration import calibrate_missing, shard_of
from dslim.models.base import Supernet
from dslim.models.complexity import measure
from dslim.subnet import Subnet
from dslim.ui import progress

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def _total(loader: Batches, max_batches: int | None) -> int | None:
    total = len(loader) if hasattr(loader, "__len__") else None
    if max_batches is not None:
        total = max_batches if total is None else min(total, max_batches)
    return total


def _hits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(correct@1, correct@5, images) of one batch."""
    hit = logits.topk(min(5, logits.shape[1]), dim=1).indices == labels[:, None]
    return torch.stack([hit[:, 0].sum(), hit.any(dim=1).sum(), torch.tensor(labels.numel(), device=labels.device)])


def _percent(counts: torch.Tensor) -> dict[str, float]:
    if int(counts[2]) == 0:
        raise UserError("the evaluation split is empty: no images to evaluate")
    return {"top1": 100.0 * int(counts[0]) / int(counts[2]), "top5": 100.0 * int(counts[1]) / int(counts[2])}


def _autocast(accelerator, device: torch.device):  # type: ignore[no-untyped-def]
    return accelerator.autocast() if accelerator is not None else torch.autocast(device.type, enabled=False)


def evaluate(
    supernet: Supernet,
    subnets: Mapping[str, Subnet],
    loader: Batches,
    input_size: int,
    accelerator=None,  # type: ignore[no-untyped-def]
    max_batches: int | None = None,
) -> list[dict]:
    """One row `{subnet, macs, params, top1, top5}` per subnet; top-1/top-5 in percent over the whole loader.

    `supernet` is the unwrapped model, run in eval mode (its mode and subnet are restored after). `max_batches`
    stops each process after that many batches (a quick look, not a result to report).
    """
    device = supernet.device
    costs = {name: measure(supernet, input_size, subnet) for name, subnet in subnets.items()}
    counts = torch.zeros(len(subnets), 3, dtype=torch.long, device=device)
    batches = itertools.islice(loader, max_batches)
    with supernet.using(train=False), torch.no_grad(), _autocast(accelerator, device):
        for images, labels in progress(batches, f"evaluating {len(subnets)} subnets", _total(loader, max_batches),
                                       accelerator):  # fmt: skip
            images, labels = images.to(device, non_blocking=True), labels.to(device).view(-1)
            for i, subnet in enumerate(subnets.values()):
                supernet.set_subnet(subnet)
                counts[i] += _hits(supernet(images), labels)
    if accelerator is not None and accelerator.num_processes > 1:
        counts = accelerator.reduce(counts, reduction="sum")
    counts = counts.cpu()
    return [
        {"subnet": name, "macs": costs[name].macs, "params": costs[name].params, **_percent(c)}
        for name, c in zip(subnets, counts)
    ]


def evaluate_dynamic(
    supernet: Supernet,
    loader: Batches,
    input_size: int,
    accelerator=None,  # type: ignore[no-untyped-def]
    max_batches: int | None = None,
) -> dict:
    """Per-input routing as deployed (`forward_routed`): top-1/top-5 plus the model's own `route_report` over the
    decisions of every evaluation image (mean routed MACs, a histogram of the decisions, ...) and, if the model
    has any, the lines of its `route_summary` under `summary`."""
    device = supernet.device
    counts = torch.zeros(3, dtype=torch.long, device=device)
    decisions = []
    batches = itertools.islice(loader, max_batches)
    with supernet.using(train=False), torch.no_grad(), _autocast(accelerator, device):
        for images, labels in progress(batches, "evaluating the dynamic model", _total(loader, max_batches),
                                       accelerator):  # fmt: skip
            images, labels = images.to(device, non_blocking=True), labels.to(device).view(-1)
            logits, decision = supernet.forward_routed(images)  # type: ignore[attr-defined]
            counts += _hits(logits, labels)
            decisions.append(decision.cpu())
    every = torch.cat(decisions)
    if accelerator is not None and accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        counts = accelerator.reduce(counts, reduction="sum")
        every = torch.cat(gather_object([every]))
    row = {**_percent(counts.cpu()), **supernet.route_report(every, input_size)}  # type: ignore[attr-defined]
    summary = supernet.route_summary(row)
    return {**row, "summary": summary} if summary else row


def run_evaluation(
    net: Supernet,
    config: Config,
    subnets: Mapping[str, Subnet],
    calibrate_batches: int,
    accelerator=None,  # type: ignore[no-untyped-def]
    max_batches: int | None = None,
    split: Literal["val", "holdout"] = "val",
) -> tuple[list[dict], dict | None]:
    """What the evaluate stage and `dslim.evaluate` compute: the subnets (calibrated first on `calibrate_batches`
    training batches if they must be) and, for a model whose router has been trained, the dynamic model, on
    `split`. Returns `(rows, dynamic row or None)`."""
    from dslim.data import build_loader

    calibrate_missing(net, config, subnets, calibrate_batches, accelerator=accelerator)
    size = config.model.input_size

    def val():  # type: ignore[no-untyped-def]
        return build_loader(config.data, split, size, seed=config.seed, **shard_of(accelerator))

    rows = evaluate(net, subnets, val(), size, accelerator, max_batches)
    dynamic = None
    if net.is_dynamic and net.router_trained:
        dynamic = evaluate_dynamic(net, val(), size, accelerator, max_batches)
    return rows, dynamic
