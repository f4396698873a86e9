"""Does DS-Net's per-image routing save real time? Dynamic inference vs the widest route run statically.

Prints, at batch 1 and batch 64 on this machine's CPU, the wall-time speed-up of `forward_routed` over the
static widest route, the MAdds speed-up of the same two, and their ratio (goal: >= 0.8; the original realized
none, because it ran the full width and masked). The gate is fitted so the images spread evenly over the routes.

    python scripts/bench_dynamic.py [--size 224] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch

from dslim.complexity import measure
from dslim.models import create_supernet


def calibrated_dsnet(size: int) -> torch.nn.Module:
    torch.manual_seed(0)
    net = create_supernet("ds_mobilenet_v1")
    for m in net.modules():
        if hasattr(m, "stats"):
            m.momentum = None
    net.train()
    batch = torch.randn(16, 3, size, size)
    with torch.no_grad():
        for route in net.routes():
            with net.using(route):
                net(batch)
    return net.eval()


def spread_gate(net, x: torch.Tensor) -> None:
    """Set the gate so image i goes to route i mod R."""
    routes = len(net.routes())
    with torch.no_grad(), net.using(net.routes()[0]):
        squeezed = net.prefix(x)[1].flatten(1)
    target = torch.nn.functional.one_hot(torch.arange(len(x)) % routes, routes).float() * 10
    weight = torch.linalg.lstsq(squeezed, target).solution.T
    net.gate_block.gate.weight.data.copy_(weight.view_as(net.gate_block.gate.weight))


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    net = calibrated_dsnet(args.size)
    routes = net.routes()
    widest = routes[-1]
    x = torch.randn(64, 3, args.size, args.size)
    spread_gate(net, x)
    _, route = net.forward_routed(x)
    route_macs = [measure(net, args.size, r).macs for r in routes]
    gate_macs = net.gate_block.gate.in_channels * net.gate_block.gate.out_channels
    dynamic_macs = sum(route_macs[r] for r in route.tolist()) / len(x) + gate_macs
    macs_speedup = route_macs[-1] / dynamic_macs
    print(f"routes used: {torch.bincount(route, minlength=len(routes)).tolist()} (images per route)")
    print(
        f"MAdds: widest route {route_macs[-1] / 1e6:.1f}M, dynamic mean {dynamic_macs / 1e6:.1f}M, "
        f"MAdds speed-up {macs_speedup:.3f}"
    )
    print(f"{'batch':>5} {'static ms':>10} {'dynamic ms':>11} {'speed-up':>9} {'speed-up / MAdds speed-up':>26}")
    for batch in (1, 64):

        def static(batch: int = batch) -> None:
            with net.using(widest):
                for i in range(0, len(x), batch):
                    net(x[i : i + batch])

        def dynamic(batch: int = batch) -> None:
            for i in range(0, len(x), batch):
                net.forward_routed(x[i : i + batch])

        t_static = timed(static, args.repeats) / len(x) * batch
        t_dynamic = timed(dynamic, args.repeats) / len(x) * batch
        speedup = t_static / t_dynamic
        print(
            f"{batch:>5} {t_static * 1e3:>10.2f} {t_dynamic * 1e3:>11.2f} {speedup:>9.3f} "
            f"{speedup / macs_speedup:>26.3f}"
        )


if __name__ == "__main__":
    main()
