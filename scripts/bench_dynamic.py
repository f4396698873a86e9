"""Does DS-Net's per-image routing save real time? The deployed dynamic model vs its widest route, static.

Prints, at batch 1 and batch 64 on this machine's CPU, the wall-time speed-up of the deployed dynamic model
(`extract_dynamic`: each route a plain static network with its own sliced weights, the shared prefix run once, the
batch grouped by route) over the widest route exported statically (`dslim.extract`), the MAdds speed-up of the same
two (`routed_macs`: the gate's own MAdds included), and their ratio (goal: >= 0.9; the original realized none,
because it ran the full width and masked). The gate is fitted so the images spread evenly over the routes. The two
alternate in one process (`benchlib.timed_pair`: medians of per-repeat ratios, wall and CPU time); the whole
measurement is made `--runs` times in a row, and the last line says in how many every row met the goal.
The allocator is set as every dslim command sets it (`dslim.training.tune_allocator`) unless `--allocator system`.

    python scripts/bench_dynamic.py [--size 224] [--repeats 7] [--runs 3] [--threads 1] [--allocator dslim|system]
                                    [--breakdown]

`--breakdown` then prints where the routed model's time goes, graph by graph (the shared prefix with the gate, each
route's tail), beside each graph's share of the widest route's MAdds: a prefix whose share of the time exceeds its
share of the MAdds caps the ratio whatever the routing costs.
"""

from __future__ import annotations

# isort: off
import dslim  # noqa: F401  (first: sets torch's OpenMP wait policy as every dslim command does)

# isort: on

import argparse

import torch
from benchlib import breakdown, load, measure, weight_mb

from dslim.deploy.extraction import extract, extract_dynamic
from dslim.models import create_supernet
from dslim.training import tune_allocator

GOAL = 0.9


def calibrated_dsnet(size: int) -> torch.nn.Module:
    """DS-Net MobileNet v1 with each route's BatchNorm statistics estimated on one random batch."""
    torch.manual_seed(0)
    net = create_supernet("ds_mobilenet_v1")
    for m in net.modules():
        if hasattr(m, "stats"):
            m.momentum = None
    net.train()
    batch = torch.randn(16, 3, size, size)
    with torch.no_grad():
        for route in net.route_subnets():
            with net.using(route):
                net(batch)
    return net.eval()


def spread_gate(net, x: torch.Tensor) -> None:  # type: ignore[no-untyped-def]
    """Fit the gate (a logistic regression on its input) so image i goes to route i mod R."""
    routes = len(net.route_subnets())
    with torch.no_grad(), net.using(net.route_subnets()[0]):
        squeezed = net.prefix(x)[1]
    target = torch.arange(len(x)) % routes
    gate = net.gate_block.gate
    opt = torch.optim.Adam(gate.parameters(), lr=0.05)
    with torch.enable_grad():
        for _ in range(500):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(gate(squeezed).flatten(1), target)
            loss.backward()
            opt.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--runs", type=int, default=3, help="whole measurements in a row")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--allocator", choices=["dslim", "system"], default="dslim")
    parser.add_argument("--breakdown", action="store_true", help="then time the routed model graph by graph")
    args = parser.parse_args()
    if args.allocator == "dslim":
        tune_allocator()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    net = calibrated_dsnet(args.size)
    routes = net.route_subnets()
    x = torch.randn(64, 3, args.size, args.size)
    spread_gate(net, x)
    routed = extract_dynamic(net, args.size)
    static = extract(net, routes[-1])
    decisions = routed.route(x)
    macs_speedup = dsnet_macs_speedup(net, decisions, args.size)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.size}px, allocator "
          f"{args.allocator}, load {load()}")  # fmt: skip
    print(f"routes used: {torch.bincount(decisions, minlength=len(routes)).tolist()} (images per route); "
          f"MAdds speed-up over the widest route {macs_speedup:.3f} (gate included)")  # fmt: skip
    print(f"weights: deployed dynamic model {weight_mb(routed):.1f} MB (every route's own), widest route "
          f"{weight_mb(static):.1f} MB")  # fmt: skip
    measure([("ds_mobilenet_v1", static, routed, x, macs_speedup)], args.runs, args.repeats, GOAL)
    if args.breakdown:
        breakdown(routed, static, [(1, [x[i : i + 1] for i in range(16)]), (64, [x])], args.repeats)


def dsnet_macs_speedup(net, decisions: torch.Tensor, size: int) -> float:  # type: ignore[no-untyped-def]
    """MAdds of the widest route run statically (no gate) over the routed mean (gate included)."""
    widest = float(net.route_macs(size)[-1]) - net.gate_block.gate.in_channels * net.gate_block.gate.out_channels
    return widest / float(net.routed_macs(decisions, size).double().mean())


if __name__ == "__main__":
    main()
