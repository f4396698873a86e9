"""Does DS-Net's per-image routing save real time? Routed inference vs the widest route run statically.

Prints, at batch 1 and batch 64 on this machine's CPU, the wall-time speed-up of `forward_routed` (the routing
protocol of `dslim.models.routing`) over the widest route run as a static subnet, the MAdds speed-up of the same
two (`routed_macs`: the gate's own MAdds included), and their ratio (goal: >= 0.9; the original realized none,
because it ran the full width and masked). The gate is fitted so the images spread evenly over the routes.
Static and routed passes alternate (the order flips every repeat); each is the median of its repeats.
The allocator is set as every dslim command sets it (`dslim.training.tune_allocator`) unless `--allocator system`.

    python scripts/bench_dynamic.py [--size 224] [--repeats 5] [--threads 1] [--allocator dslim|system]
"""

from __future__ import annotations

# isort: off
import dslim  # noqa: F401  (first: sets torch's OpenMP wait policy as every dslim command does)

# isort: on

import argparse
import os
import statistics
import time

import torch

from dslim.models import create_supernet
from dslim.training import tune_allocator


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


def timed_pair(static, routed, repeats: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    static(), routed()  # warm-up
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(repeats):
        order = (0, 1) if i % 2 == 0 else (1, 0)
        for k in order:
            start = time.perf_counter()
            (static, routed)[k]()
            times[k].append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--allocator", choices=["dslim", "system"], default="dslim")
    args = parser.parse_args()
    if args.allocator == "dslim":
        tune_allocator()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    net = calibrated_dsnet(args.size)
    routes = net.route_subnets()
    widest = routes[-1]
    x = torch.randn(64, 3, args.size, args.size)
    spread_gate(net, x)
    _, decisions = net.forward_routed(x)
    route_macs = net.routed_macs(torch.arange(len(routes)), args.size).double()
    gate_macs = net.gate_block.gate.in_channels * net.gate_block.gate.out_channels
    static_macs = float(route_macs[-1]) - gate_macs  # the widest route run statically has no gate
    macs_speedup = static_macs / float(net.routed_macs(decisions, args.size).double().mean())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.size}px, allocator "
          f"{args.allocator}, load {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"routes used: {torch.bincount(decisions, minlength=len(routes)).tolist()} (images per route)")
    print(f"MAdds: widest route {static_macs / 1e6:.1f}M, routed mean "
          f"{static_macs / macs_speedup / 1e6:.1f}M (gate included), MAdds speed-up {macs_speedup:.3f}")  # fmt: skip
    print("| batch | static ms/batch | routed ms/batch | speed-up | MAdds speed-up | speed-up / MAdds speed-up |")
    print("|---:|---:|---:|---:|---:|---:|")
    for batch in (1, 64):

        def static(batch: int = batch) -> None:
            with net.using(widest):
                for i in range(0, len(x), batch):
                    net(x[i : i + batch])

        def routed(batch: int = batch) -> None:
            for i in range(0, len(x), batch):
                net.forward_routed(x[i : i + batch])

        t_static, t_routed = (t / len(x) * batch for t in timed_pair(static, routed, args.repeats))
        speedup = t_static / t_routed
        print(f"| {batch} | {t_static * 1e3:.2f} | {t_routed * 1e3:.2f} | {speedup:.3f} | {macs_speedup:.3f} | "
              f"{speedup / macs_speedup:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
