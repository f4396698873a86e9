"""One sandwich training step of dslim against the original code (DS-Net stage I, US-Net).

    python scripts/bench_original.py --dsnet-src D --slimmable-src S [--extra-path P ...] [--batch 32] [--size 160]

`D` and `S` are local copies of the original repositories (changlin31/DS-Net, JiahuiYu/slimmable_networks; never
committed); `--extra-path` puts more directories first on `sys.path` (DS-Net's model code imports timm 0.3.2). Only
the originals' model modules are imported; what runs on them is this script's. docs/benchmarks.md lists the local
patches the originals need on a current PyTorch CPU build.

Both sides run the same step: zero the gradients; the largest subnet on the labels (label smoothing 0.1); two random
subnets and the smallest on the largest's detached softmax (in-place distillation, soft cross-entropy); a backward
after each forward, so the gradients add up; one SGD step (Nesterov momentum 0.9, weight decay 1e-4). Random
subnets are `uniform-r`, r drawn from 1..12, for DS-Net and a width drawn from [0.25, 1.0] for US-Net. Each side
sets widths its own way: DS-Net's `set_mode`, the slimmable networks' `width_mult` attribute on every module,
dslim's `set_subnet`.

Models: DS-Net's `slimmable_mbnet_v1_bn_uniform` (dropout 0.2) against dslim's `ds_mobilenet_v1` with private
BatchNorm (recipes/dsnet_mbv1.py); the slimmable networks' `us_mobilenet_v1`, trained with width list = its range as
its training script sets it, against dslim's `mobilenet_v1` with width_range (0.25, 1.0) and calibrated BatchNorm
(recipes/usnet_mbv1.py). Before timing, parameter counts and executed conv/linear MACs
(`torch.utils.flop_counter`) must agree at the largest and smallest subnets and at one random subnet.

Timing: one process, the same input batch, `torch.set_num_threads(--threads)`, dslim's allocator setting
(`tune_allocator`) for both; after `--warmup` steps of each, `--pairs` pairs, the order flipped every pair, the same
random subnets for both within a pair. A row gives the median step time of each side and the median over pairs of
the per-pair ratio dslim / original (wall and user CPU), and the median kernel (sys) time per step. `--profile N`
then runs N more steps of each under torch.profiler and prints the operators whose self CPU time differs most.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from dslim.models import create_supernet
from dslim.training import tune_allocator

SetWidth = Callable[[Any], None]
USNET_RANGE = (0.25, 1.0)
USNET_GRID = tuple(round(0.25 + 0.025 * i, 3) for i in range(31))  # recipes/usnet_mbv1.py's named widths


class Side:
    """One implementation: a model in train mode, how to set a subnet on it, its optimizer."""

    def __init__(self, name: str, model: nn.Module, set_width: SetWidth) -> None:
        self.name, self.model, self.set_width = name, model.train(), set_width
        self.opt = torch.optim.SGD(model.parameters(), lr=0.08, momentum=0.9, nesterov=True, weight_decay=1e-4)

    def step(self, subnets: list[Any], x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, float]:
        """Wall, user-CPU and sys-CPU seconds of one sandwich step (largest first)."""
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        teacher = None
        for subnet in subnets:
            self.set_width(subnet)
            logits = self.model(x)
            if teacher is None:
                loss = F.cross_entropy(logits, y, label_smoothing=0.1)
                teacher = logits.detach().softmax(1)
            else:
                loss = -(teacher * F.log_softmax(logits, 1)).sum(1).mean()
            loss.backward()
        self.opt.step()
        t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        return t1 - t0, r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime


def import_from(src: str, module: str, argv: list[str] | None = None) -> Any:
    """Import `module` from a source tree given on the command line (with `argv` in place during the import)."""
    if not Path(src).is_dir():
        sys.exit(f"{src}: not a directory (a local copy of the original repository)")
    sys.path.insert(0, str(Path(src).resolve()))
    saved = sys.argv
    sys.argv = argv if argv is not None else saved
    try:
        return __import__(module, fromlist=["_"])
    finally:
        sys.argv = saved


def dsnet_sides(src: str) -> tuple[Side, Side, Callable[[np.random.Generator], list[Any]]]:
    net_module = import_from(src, "dyn_slim.models.dyn_slim_net")
    original = net_module.slimmable_mbnet_v1_bn_uniform(num_classes=1000, drop_rate=0.2)

    def set_original(subnet: Any) -> None:
        if isinstance(subnet, int):
            original.set_mode("uniform", choice=subnet)
        else:
            original.set_mode(subnet)

    net = create_supernet("ds_mobilenet_v1", num_classes=1000, bn="private", dropout=0.2)
    resolved = {name: net.resolve(name) for name in ("largest", "smallest")}

    def set_dslim(subnet: Any) -> None:
        net.set_subnet(net.resolve(f"uniform-{subnet}") if isinstance(subnet, int) else resolved[subnet])

    def draw(rng: np.random.Generator) -> list[Any]:
        return ["largest", *(int(r) for r in rng.integers(1, 13, size=2)), "smallest"]

    return Side("DS-Net", original, set_original), Side("dslim", net, set_dslim), draw


def usnet_sides(src: str, size: int) -> tuple[Side, Side, Callable[[np.random.Generator], list[Any]]]:
    app = Path(src, "apps", "us_mobilenet_v1_train_val.yml")
    # the slimmable networks read their settings (FLAGS) from an `app:<yml>` argument at import time
    config = import_from(src, "utils.config", argv=[sys.argv[0], f"app:{app}"])
    config.FLAGS.width_mult_list = config.FLAGS.width_mult_range  # what its training script does for US-Nets
    original = import_from(src, "models.us_mobilenet_v1").Model(num_classes=1000, input_size=size)

    def set_original(width: float) -> None:
        original.apply(lambda m: setattr(m, "width_mult", width))

    net = create_supernet("mobilenet_v1", num_classes=1000, widths=USNET_GRID, width_range=USNET_RANGE, bn="calibrated")
    largest, smallest = net.largest(), net.smallest()

    def set_dslim(width: float) -> None:
        net.set_subnet(
            largest if width == USNET_RANGE[1] else smallest if width == USNET_RANGE[0] else net.uniform(width)
        )

    def draw(rng: np.random.Generator) -> list[Any]:
        return [USNET_RANGE[1], *(float(w) for w in rng.uniform(*USNET_RANGE, size=2)), USNET_RANGE[0]]

    return Side("US-Net", original, set_original), Side("dslim", net, set_dslim), draw


def macs(side: Side, subnet: Any, size: int) -> int:
    """Multiply-accumulates of the conv and linear operators one image executes (the same count for both sides)."""
    side.set_width(subnet)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        side.model(torch.randn(2, 3, size, size))
    return counter.get_total_flops() // 4  # 2 FLOPs per MAC, 2 images


def check_same(original: Side, dslim: Side, subnets: list[Any], size: int) -> str:
    counts = [sum(p.numel() for p in side.model.parameters()) for side in (original, dslim)]
    if counts[0] != counts[1]:
        sys.exit(f"parameter counts differ: {original.name} {counts[0]:,}, dslim {counts[1]:,}")
    parts = [f"{counts[0]:,} parameters"]
    for subnet in subnets:
        pair = [macs(side, subnet, size) for side in (original, dslim)]
        if pair[0] != pair[1]:
            sys.exit(f"MACs differ at {subnet}: {original.name} {pair[0]:,}, dslim {pair[1]:,}")
        parts.append(f"{subnet if isinstance(subnet, str) else round(subnet, 4)}: {pair[0] / 1e6:.1f}M MACs")
    return ", ".join(parts)


def bench(original: Side, dslim: Side, draw: Callable, args: argparse.Namespace) -> dict:
    rng = np.random.default_rng(args.seed)
    x, y = torch.randn(args.batch, 3, args.size, args.size), torch.randint(0, 1000, (args.batch,))
    for _ in range(args.warmup):
        subnets = draw(rng)
        original.step(subnets, x, y), dslim.step(subnets, x, y)
    pairs = []
    for i in range(args.pairs):
        subnets = draw(rng)
        if i % 2:
            d, o = dslim.step(subnets, x, y), original.step(subnets, x, y)
        else:
            o, d = original.step(subnets, x, y), dslim.step(subnets, x, y)
        pairs.append((o, d))

    def median(f: Callable) -> float:
        return statistics.median(f(o, d) for o, d in pairs)

    return {
        "original_ms": 1e3 * median(lambda o, d: o[0]),
        "dslim_ms": 1e3 * median(lambda o, d: d[0]),
        "ratio": median(lambda o, d: d[0] / o[0]),
        "user_ratio": median(lambda o, d: d[1] / o[1]),
        "sys_ms": (1e3 * median(lambda o, d: o[2]), 1e3 * median(lambda o, d: d[2])),
        "ratios": [d[0] / o[0] for o, d in pairs],
    }


def op_times(side: Side, draw: Callable, steps: int, args: argparse.Namespace) -> tuple[dict[str, tuple], float]:
    """(self CPU ms, calls) per step of every operator, and wall ms per step, over `steps` profiled steps."""
    rng = np.random.default_rng(args.seed + 1)
    x, y = torch.randn(args.batch, 3, args.size, args.size), torch.randint(0, 1000, (args.batch,))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            side.step(draw(rng), x, y)
        wall = (time.perf_counter() - start) / steps
    return {e.key: (e.self_cpu_time_total / 1e3 / steps, e.count / steps) for e in prof.key_averages()}, 1e3 * wall


def print_profile(original: Side, dslim: Side, draw: Callable, args: argparse.Namespace) -> None:
    (o_ops, o_wall), (d_ops, d_wall) = (op_times(s, draw, args.profile, args) for s in (original, dslim))
    print(f"\nprofile, {args.profile} steps each (same subnets): wall ms/step {original.name} {o_wall:.1f}, "
          f"dslim {d_wall:.1f}; self CPU ms/step summed over operators {sum(v[0] for v in o_ops.values()):.1f} / "
          f"{sum(v[0] for v in d_ops.values()):.1f}")  # fmt: skip
    print(f"| operator | {original.name} ms/step | dslim ms/step | dslim - {original.name} | calls/step |")
    print("|---|---:|---:|---:|---:|")
    none = (0.0, 0.0)
    names = sorted(set(o_ops) | set(d_ops), key=lambda k: -abs(d_ops.get(k, none)[0] - o_ops.get(k, none)[0]))
    for name in names[: args.profile_rows]:
        (o, o_calls), (d, d_calls) = o_ops.get(name, none), d_ops.get(name, none)
        print(f"| {name} | {o:.2f} | {d:.2f} | {d - o:+.2f} | {o_calls:.0f} / {d_calls:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsnet-src", help="local copy of changlin31/DS-Net (skip DS-Net if not given)")
    parser.add_argument("--slimmable-src", help="local copy of JiahuiYu/slimmable_networks (skip US-Net if not given)")
    parser.add_argument("--extra-path", nargs="*", default=[], help="directories put first on sys.path (timm 0.3.2)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=160, help="input resolution (a multiple of 32)")
    parser.add_argument("--warmup", type=int, default=2, help="steps of each side before timing")
    parser.add_argument("--pairs", type=int, default=7, help="interleaved pairs of steps")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", type=int, default=0, help="then profile this many steps of each side")
    parser.add_argument("--profile-rows", type=int, default=25)
    args = parser.parse_args()
    if args.size % 32:
        sys.exit("--size must be a multiple of 32 (the slimmable networks' average pool is sized from it)")
    if not (args.dsnet_src or args.slimmable_src):
        sys.exit("give --dsnet-src and/or --slimmable-src")
    for path in reversed(args.extra_path):
        sys.path.insert(0, str(Path(path).resolve()))
    torch.set_num_threads(args.threads)
    allocator = tune_allocator()
    torch.manual_seed(args.seed)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), batch {args.batch} at {args.size}px, "
          f"{args.warmup} warm-up + {args.pairs} interleaved pairs, tune_allocator: {allocator}, "
          f"load {' '.join(f'{v:.1f}' for v in os.getloadavg())}")  # fmt: skip
    builders = []
    if args.dsnet_src:
        builders.append(lambda: dsnet_sides(args.dsnet_src))
    if args.slimmable_src:
        builders.append(lambda: usnet_sides(args.slimmable_src, args.size))
    rows = []
    for build in builders:
        original, dslim, draw = build()
        print(f"{original.name}: {check_same(original, dslim, draw(np.random.default_rng(args.seed)), args.size)}")
        start = time.perf_counter()
        rows.append((original, dslim, draw, bench(original, dslim, draw, args)))
        r = rows[-1][3]
        print(f"  per-pair ratios {' '.join(f'{v:.3f}' for v in r['ratios'])} ({time.perf_counter() - start:.0f} s)")
    print("\n| step | original ms | dslim ms | dslim / original | user-CPU ratio | sys ms original / dslim |")
    print("|---|---:|---:|---:|---:|---:|")
    for original, _, _, r in rows:
        print(f"| {original.name} | {r['original_ms']:.1f} | {r['dslim_ms']:.1f} | {r['ratio']:.3f} | "
              f"{r['user_ratio']:.3f} | {r['sys_ms'][0]:.0f} / {r['sys_ms'][1]:.0f} |")  # fmt: skip
    if args.profile:
        for original, dslim, draw, _ in rows:
            print_profile(original, dslim, draw, args)


if __name__ == "__main__":
    main()
