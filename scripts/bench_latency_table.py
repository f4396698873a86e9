"""How well does a per-layer latency table estimate subnets it never measured? Every built-in architecture.

For one recipe per built-in architecture, measures what `python -m dslim.latency --recipe R --batch 1 --layers 8
--checks 4` measures (`dslim.deploy.latency.measure_table`: the named subnets, 8 random probes timed layer by
layer and fitted, then 4 more random subnets held out of the fit) and prints, per architecture, the largest error
of the table's estimate against the measured latency on the held-out subnets (goal: within 10%) and on the subnets
it was fitted on, at batch 1 with `--threads` threads. Architectures without channel choices (the CIFAR ResNets)
have one subnet only, timed again as each probe and check: their error is how well a timing repeats.

    python scripts/bench_latency_table.py [--threads 1] [--layers 8] [--checks 4] [--recipes autoslim_mbv2 ...]
"""

from __future__ import annotations

# isort: off
import dslim  # noqa: F401  (first: sets torch's OpenMP wait policy as every dslim command does)

# isort: on

import argparse
import time

import torch
from benchlib import load

from dslim.deploy.latency import measure_table
from dslim.deploy.latency_table import LatencyTable, estimate_errors
from dslim.models import from_config
from dslim.recipes import load as load_recipe
from dslim.training import tune_allocator

RECIPES = ("autoslim_mbv1", "autoslim_mbv2", "dmcp_resnet18", "autoslim_resnet50", "blockdrop_r101_imagenet",
           "dsnet_mbv1", "blockdrop_r32_c10", "blockdrop_r110_c10")  # fmt: skip
"""One recipe per built-in architecture: mobilenet_v1, mobilenet_v2 (1.5x), resnet18, resnet50, resnet101,
ds_mobilenet_v1, cifar_resnet32, cifar_resnet110."""
GOAL = 0.10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--checks", type=int, default=4)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES))
    args = parser.parse_args()
    tune_allocator()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch 1, --layers {args.layers} --checks "
          f"{args.checks}, load {load()}")  # fmt: skip
    rows = []
    for recipe in args.recipes:
        config = load_recipe(recipe)
        model = config.model
        net = from_config(model)
        began = time.perf_counter()
        table = measure_table(net, net.named_subnets(), model.input_size, (1,), torch.device("cpu"),
                              layers=args.layers, bins=model.channel_bins or 12, min_bin=model.min_bin,
                              checks=args.checks)  # fmt: skip
        errors = estimate_errors(LatencyTable(table), net)
        held = max((abs(r["error"]["1"]) for r in errors if r["held_out"]), default=0.0)
        fitted = max((abs(r["error"]["1"]) for r in errors if not r["held_out"]), default=0.0)
        rows.append((model.arch, recipe, model.input_size, len(errors), held, fitted, time.perf_counter() - began))
        print(f"{model.arch} ({recipe}): held out {100 * held:.1f}%, fitted {100 * fitted:.1f}% "
              f"({rows[-1][-1]:.0f} s, load {load()})", flush=True)  # fmt: skip
    print("\n| architecture | recipe | px | subnets timed | largest error, held out | largest error, fitted | goal |")
    print("|---|---|---:|---:|---:|---:|---|")
    for arch, recipe, size, n, held, fitted, _ in rows:
        print(f"| {arch} | {recipe} | {size} | {n} | {100 * held:.1f}% | {100 * fitted:.1f}% | "
              f"{'met' if held <= GOAL else 'NOT met'} (<= {100 * GOAL:.0f}%) |")  # fmt: skip
    met = sum(held <= GOAL for _, _, _, _, held, _, _ in rows)
    print(
        f"\nload {load()}; goal (held-out error within {100 * GOAL:.0f}%): met for {met} of {len(rows)} architectures"
    )


if __name__ == "__main__":
    main()
