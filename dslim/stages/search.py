"""The `search` stage: greedy channel search of a trained supernet on held-out training images (AutoSlim).

Any supernet whose channel groups have choices can be searched: AutoSlim's bins (`--model.channel-bins`), DS-Net's
stage widths (a static subnet of a DS-Net supernet under a MACs budget). The search itself is
`dslim.methods.autoslim`; this stage scores candidates, spreads them over processes and writes:

- `search/trace.jsonl`: the greedy path, one line per step (each candidate's MACs and score included). It is the
  stage's checkpoint: a killed search replays it and continues from its last step, to the same path.
- `search/reference.json` and `search/search.png`: the path's MACs against held-out top-1, beside the supernet's
  own named subnets (the uniform widths) scored the same way.
- `search/subnets.json`: for each target of `targets` the first subnet of the path at or below it, named
  `<prefix>-<target>` (`autoslim-300M`), with its MACs, params and held-out top-1; later stages and commands
  resolve these names. Latency budgets (`targets_ms`, in ms at `latency_batch`) are read from a latency table
  measured on the target device (`python -m dslim.latency --layers N`: its per-layer fits estimate any subnet, the
  way Once-for-All's look-up tables do): the first subnet of the path at or below each is `<prefix>-3.2ms`, and every
  recorded subnet carries its `latency_ms`. The path goes on until every budget, of either kind, is met.

Candidates are scored on the `holdout` split (`--data.holdout N` training images, never trained on), never on the
validation set (mmrazor's search used the validation set). Their BatchNorm statistics (`bn`):
- `batch` (default): BatchNorm in training mode on held-out batches of `batch_size` images, nothing recorded. One
  forward per candidate and batch, no statistics to compute or keep; with batches of a thousand images the batch
  statistics are those of the population to within noise that does not reorder candidates. The original AutoSlim
  and mmrazor did this.
- `recalibrate`: statistics from `calibrate_batches` training batches, in a throwaway scope
  (`dslim.evaluation.calibration.scratch_statistics`), then an evaluation-mode pass; a few times the cost, for
  held-out sets too small to give good batch statistics.
Scoring is `dslim.evaluation.heldout.HeldOutScorer`: every process holds all held-out images (and calibration
batches) in memory on its device, scores every P-th candidate and the scores are summed across processes, so P
processes search about P times faster; every process then makes the same choice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated, Literal

from dslim.config import FINITE, Check, Config, Positive, at_least
from dslim.deploy.latency_table import LatencyTable
from dslim.errors import UserError
from dslim.evaluation.heldout import HeldOutScorer
from dslim.evaluation.plots import plot_search
from dslim.io import write_json
from dslim.methods.autoslim import (
    Step,
    append_step,
    greedy_slim,
    latency_name,
    reached,
    read_trace,
    target_name,
    write_trace,
)
from dslim.models.base import Supernet
from dslim.models.complexity import MacsModel
from dslim.models.sampling import smallest_of
from dslim.stages.context import StageContext
from dslim.stages.registry import register_stage
from dslim.subnet import Subnet


@dataclass(frozen=True)
class SearchConfig:
    """Greedy channel search on held-out training images (AutoSlim); see `dslim.stages.search`."""

    targets: Annotated[tuple[float, ...], at_least(1.0), FINITE] = ()
    """MACs budgets (e.g. 500e6 300e6 200e6): the first subnet of the greedy path at or below each is recorded."""
    targets_ms: Annotated[tuple[float, ...], Check(lambda v: v > 0, "above 0"), FINITE] = ()
    """Latency budgets in milliseconds (e.g. 3.2 2): the first subnet of the greedy path whose latency, estimated
    from `latency_table` at `latency_batch`, is at or below each is recorded (`<prefix>-3.2ms`)."""
    latency_table: str | None = None
    """The model's `latency.json` measured on the target device, with a per-layer table to estimate any subnet
    (`python -m dslim.latency --recipe R --batch 1 --layers 8`); needed by `targets_ms`."""
    latency_batch: Positive = 1
    """Batch size the latency budgets are for (one the table measured)."""
    prefix: str = "autoslim"
    """Names of the recorded subnets: `<prefix>-300M`."""
    bn: Literal["batch", "recalibrate"] = "batch"
    """Candidates' BatchNorm statistics: each held-out batch's own (`batch`), or computed from
    `calibrate_batches` training batches in a throwaway scope (`recalibrate`)."""
    batch_size: Positive = 1024
    """Held-out images per forward (and per set of batch statistics); the held-out split is cut into equal batches
    of at most this size."""
    calibrate_batches: Positive = 20
    """`recalibrate`: training batches (of `data.batch_size`) per candidate's statistics."""


def check(config: Config, net: Supernet, cfg: SearchConfig) -> None:
    if config.data.holdout == 0:
        raise UserError("the search stage scores subnets on held-out training images: set --data.holdout N "
                        "(e.g. a few thousand; the same images are then left out of training)")  # fmt: skip
    if not cfg.targets and not cfg.targets_ms:
        raise UserError(
            "give the search's MACs budgets (--stages.search.targets 500e6 300e6 200e6) and/or latency budgets "
            "(--stages.search.targets-ms 3.2 2 with --stages.search.latency-table latency.json)"
        )
    latency_table(config, net, cfg)
    if net.bn_mode == "switchable":
        raise UserError("the search needs a shared BatchNorm affine to run subnets it was not trained at "
                        "(--model.bn calibrated or private), not switchable BatchNorm")  # fmt: skip
    choices = net.group_choices(config.model.channel_bins, config.model.min_bin, config.model.channel_divisor)
    if all(len(c) < 2 for c in choices.values()):
        raise UserError(f"{net.arch} has no channel group with a choice to search (--model.channel-bins 0?)")
    floor = MacsModel(net, config.model.input_size).exact(smallest_of(choices))
    if cfg.targets and min(cfg.targets) < floor:
        raise UserError(f"--stages.search.targets {min(cfg.targets):g} is below the smallest subnet the search can "
                        f"reach ({floor:,} MACs at {config.model.input_size}px)")  # fmt: skip


def latency_table(config: Config, net: Supernet, cfg: SearchConfig) -> LatencyTable | None:
    """The table latency budgets are read from, checked to describe this model at this input size and batch and to
    estimate any subnet; None without latency budgets."""
    if not cfg.targets_ms and cfg.latency_table is None:
        return None
    if not cfg.targets_ms or cfg.latency_table is None:
        raise UserError("latency budgets need both --stages.search.targets-ms MS ... and --stages.search.latency-table "
                        "latency.json (measured with python -m dslim.latency --layers N)")  # fmt: skip
    table = LatencyTable.for_budgets(cfg.latency_table, net, config.model.input_size, cfg.latency_batch,
                                     "--stages.search.latency-table")  # fmt: skip
    return table


@register_stage("search", SearchConfig, reads=("supernet",), writes=("subnets",), check=check)
def search(ctx: StageContext) -> None:
    """Greedy channel search on held-out training images (AutoSlim): subnets under each MACs target."""
    cfg: SearchConfig = ctx.settings  # type: ignore[assignment]
    config, acc = ctx.config, ctx.accelerator
    net = ctx.supernet().eval()
    check(config, net, cfg)  # the supernet read may differ from the model settings (`--from`)
    choices = net.group_choices(config.model.channel_bins, config.model.min_bin, config.model.channel_divisor)
    macs_model = MacsModel(net, config.model.input_size)
    table, latency = latency_table(config, net, cfg), {}

    def ms(subnet: Subnet) -> float:
        """`subnet`'s latency at `latency_batch` by the table (estimated per layer unless measured)."""
        if subnet not in latency:
            latency[subnet] = table.latency(subnet, cfg.latency_batch, net)[0]  # type: ignore[union-attr]
        return latency[subnet]

    if table is not None and min(cfg.targets_ms) < ms(smallest_of(choices)):
        least = ms(smallest_of(choices))
        raise UserError(f"--stages.search.targets-ms {min(cfg.targets_ms):g} is below the latency of the smallest "
                        f"subnet the search can reach ({least:.3f} ms by {cfg.latency_table})")  # fmt: skip
    trace = ctx.dir / "trace.jsonl"
    start = net.largest()
    steps, torn = read_trace(trace, start, choices)  # every process reads it (the run directory is shared)
    acc.wait_for_everyone()
    if acc.is_main_process:
        ctx.dir.mkdir(parents=True, exist_ok=True)
        if torn:
            write_trace(trace, steps)
    began = time.perf_counter()
    score = HeldOutScorer(net, config, acc, cfg.batch_size, cfg.bn, cfg.calibrate_batches)
    if steps:
        acc.print(f"search: resuming after step {len(steps) - 1} ({steps[-1].macs:,} MACs) from {trace}")

    def record(step: Step) -> None:
        index = len(steps)  # `greedy_slim` appends the step to `steps` after recording it
        if acc.is_main_process:
            append_step(trace, step, index)
        change = "start" if step.removed is None else f"{step.removed} -> {step.subnet[step.removed]}"
        acc.print(f"search step {index}: {change}, {step.macs / 1e6:,.3f}M MACs, held-out top-1 "
                  f"{step.score.top1:.2f}%")  # fmt: skip

    if not steps:
        first = Step(start, macs_model.exact(start), score([start])[0])
        record(first)
        steps.append(first)
    stop_at = int(min(cfg.targets)) if cfg.targets else macs_model.exact(start)  # no MACs budget: met at once
    under = (lambda step: ms(step.subnet) <= min(cfg.targets_ms)) if table is not None else (lambda step: True)
    greedy_slim(steps, choices, score, macs_model.exact, stop_at, record, done=under)
    seconds = time.perf_counter() - began

    named = {}
    for name, subnet in net.named_subnets().items():
        if subnet not in named.values():
            named[name] = subnet
    reference = [{"subnet": n, "macs": macs_model.exact(s), "holdout_top1": sc.top1, "holdout_loss": sc.loss}
                 for (n, s), sc in zip(named.items(), score(list(named.values())))]  # fmt: skip
    found = {target_name(cfg.prefix, t): i for t, i in reached(steps, cfg.targets).items()}
    if table is not None:
        found.update(
            {
                latency_name(cfg.prefix, t): i
                for t, i in reached(steps, cfg.targets_ms, lambda step: ms(step.subnet)).items()
            }
        )
    ctx.metrics.write({"kind": "search", "stage": ctx.name, "steps": len(steps) - 1, "seconds": round(seconds, 2),
                       "found": {n: steps[i].macs for n, i in found.items()}})  # fmt: skip
    if acc.is_main_process:
        write_json(ctx.dir / "reference.json", reference)
        plot_search(ctx.dir / "search.png", steps, reference, found, cfg.targets)
    acc.print(f"search: {len(steps) - 1} steps in {seconds:.1f} s; "
              + ", ".join(f"{n} {steps[i].macs / 1e6:,.2f}M MACs top-1 {steps[i].score.top1:.2f}%"
                          for n, i in found.items()))  # fmt: skip
    scores = {n: {"holdout_top1": steps[i].score.top1, "holdout_loss": steps[i].score.loss, "step": i,
                  **({"latency_ms": round(ms(steps[i].subnet), 4)} if table is not None else {})}
              for n, i in found.items()}  # fmt: skip
    ctx.save_subnets(net, {n: steps[i].subnet for n, i in found.items()}, scores)
