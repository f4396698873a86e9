"""Does AutoSlim's candidate scoring scale with processes? Candidates scored per second by 1 and by 2 processes.

Each measurement launches the search's scoring as the `search` stage runs it (`dslim.evaluation.heldout
.HeldOutScorer`, every process scoring every P-th candidate of a greedy step, the scores summed across processes;
`dslim.methods.autoslim.greedy_step`) for `--steps` greedy steps from the largest subnet, under
`torch.distributed.run` with P processes of one thread each on the CPU (gloo), and times it between two barriers
(data loading and start-up excluded). The model is `autoslim_digits`'s supernet (MobileNet v1 at 32px, random
weights: scores are not the point) on `--holdout` held-out digits. Runs with 1 and 2 processes alternate
(`--rounds` of each); the speed-up is the median over rounds of the 2-process rate over the 1-process rate
(goal: >= 1.8).

    python scripts/bench_search.py [--rounds 3] [--steps 4] [--holdout 600]
"""

from __future__ import annotations

# isort: off
import dslim  # noqa: F401  (first: sets torch's OpenMP wait policy as every dslim command does)

# isort: on

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

GOAL = 1.8


def child(args: argparse.Namespace) -> None:
    """One measurement, in each process of a `torch.distributed.run` launch."""
    import torch

    from dslim.config import replace
    from dslim.evaluation.heldout import HeldOutScorer
    from dslim.methods.autoslim import greedy_step
    from dslim.models import from_config
    from dslim.models.complexity import MacsModel
    from dslim.recipes import load
    from dslim.training import make_accelerator

    torch.set_num_threads(1)
    config = replace(load("autoslim_digits"), **{"data.holdout": args.holdout})
    acc = make_accelerator()
    torch.manual_seed(0)
    net = from_config(config.model).eval()
    score = HeldOutScorer(net, config, acc, config.stages.search.batch_size, "batch", 1)  # type: ignore[attr-defined]
    choices = net.group_choices(config.model.channel_bins, config.model.min_bin)
    macs = MacsModel(net, config.model.input_size)
    current, scored = net.largest(), 0
    acc.wait_for_everyone()
    began = time.perf_counter()
    for _ in range(args.steps):
        step = greedy_step(current, choices, score, macs.exact)
        assert step is not None
        scored += len(step.candidates)
        current = step.subnet
    acc.wait_for_everyone()
    if acc.is_main_process:
        print(json.dumps({"processes": acc.num_processes, "candidates": scored,
                          "seconds": time.perf_counter() - began}))  # fmt: skip


def launch(processes: int, args: argparse.Namespace) -> dict:
    """Candidates, seconds and rate of one launch with `processes` processes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
           str(Path(__file__).resolve()), "--child", "--steps", str(args.steps),
           "--holdout", str(args.holdout)]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"a {processes}-process launch failed:\n{done.stderr[-3000:]}")
    result = json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])
    return {**result, "rate": result["candidates"] / result["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4, help="greedy steps per measurement")
    parser.add_argument("--holdout", type=int, default=600, help="held-out digits each candidate is scored on")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    from benchlib import load

    print(f"{os.cpu_count()} CPUs, 1 thread per process, {args.steps} greedy steps on {args.holdout} held-out digits "
          f"per measurement, load {load()}")  # fmt: skip
    print("| round | 1 process: candidates/s | 2 processes: candidates/s | speed-up | load |")
    print("|---:|---:|---:|---:|---|")
    ratios = []
    for r in range(args.rounds):
        one, two = (launch(p, args) for p in ((1, 2) if r % 2 == 0 else (2, 1)))
        if one["processes"] == 2:
            one, two = two, one
        ratios.append(two["rate"] / one["rate"])
        print(f"| {r + 1} | {one['rate']:.2f} | {two['rate']:.2f} | {ratios[-1]:.3f} | {load()} |", flush=True)
    speedup = statistics.median(ratios)
    print(f"\nmedian speed-up {speedup:.3f}: goal (>= {GOAL}) {'met' if speedup >= GOAL else 'NOT met'}")


if __name__ == "__main__":
    main()
