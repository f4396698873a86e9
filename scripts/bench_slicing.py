"""Cost of weight slicing: one training step (forward + backward) of a supernet set to a subnet vs. the same subnet
exported as a static network (`dslim.extract`, then `.train()`), with glibc's default allocator and with the
allocator setting dslim applies at start-up (`dslim.training.tune_allocator`), side by side in one run.

    python scripts/bench_slicing.py [--batch 32] [--size 160] [--repeats 7] [--threads 1] [--allocator both]

After a warm-up the two models alternate step by step (the order flips every pair). Each row gives the median step
time of each and the median over pairs of the per-pair ratio (which cancels slow drifts of a shared machine), for
wall time and for user CPU time, and the median kernel (sys) time per step, which on CPU is almost all page faults
of freshly mapped memory: glibc's malloc returns large freed blocks to the kernel and faults them in again, unless
told to keep them (what `tune_allocator` does; `MALLOC_*` variables or a jemalloc/tcmalloc preload do the same).
Each allocator runs in a process of its own (a malloc setting cannot be undone).
"""

from __future__ import annotations

# isort: off
import dslim  # noqa: F401  (first: sets torch's OpenMP wait policy as every dslim command does)

# isort: on

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from dslim.deploy.extraction import extract
from dslim.models import create_supernet
from dslim.training import tune_allocator

WIDTHS = ("0.25", "0.5", "0.75", "1.0")


def step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, float]:
    """Wall, user-CPU and sys-CPU seconds of one forward + backward (gradients set to None first, as optimizers do)."""
    model.zero_grad(set_to_none=True)
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    F.cross_entropy(model(x), y).backward()
    t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    return t1 - t0, r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime


def bench(arch: str, width: str, batch: int, size: int, warmup: int, repeats: int) -> dict:
    torch.manual_seed(0)
    net = create_supernet(arch, widths=tuple(float(w) for w in WIDTHS), bn="private")
    subnet = net.resolve(width)
    static = extract(net, subnet).train()
    net.set_subnet(subnet)
    net.train()
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 1000, (batch,))
    for _ in range(warmup):
        step(net, x, y), step(static, x, y)
    pairs = []
    for i in range(repeats):
        if i % 2:
            s, d = step(static, x, y), step(net, x, y)
        else:
            d, s = step(net, x, y), step(static, x, y)
        pairs.append((d, s))

    def median(f) -> float:  # type: ignore[no-untyped-def]
        return statistics.median(f(d, s) for d, s in pairs)

    return {
        "supernet_ms": 1e3 * median(lambda d, s: d[0]),
        "static_ms": 1e3 * median(lambda d, s: s[0]),
        "ratio": median(lambda d, s: d[0] / s[0]),
        "user_ratio": median(lambda d, s: d[1] / s[1]),
        "sys_ms": (1e3 * median(lambda d, s: d[2]), 1e3 * median(lambda d, s: s[2])),
    }


def rows(args: argparse.Namespace) -> list[dict]:
    if args.allocator == "dslim":
        assert tune_allocator(), "glibc's mallopt is not available here"
    out = []
    for arch in args.archs:
        for width in args.widths:
            out.append({"arch": arch, "width": width, **bench(arch, width, args.batch, args.size, args.warmup,
                                                                args.repeats)})  # fmt: skip
    return out


def in_process(args: argparse.Namespace, allocator: str) -> list[dict]:
    cmd = [sys.executable, __file__, "--json", "--allocator", allocator, "--archs", *args.archs, "--widths",
           *args.widths, "--batch", str(args.batch), "--size", str(args.size), "--warmup", str(args.warmup),
           "--repeats", str(args.repeats), "--threads", str(args.threads)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    return json.loads(subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=["mobilenet_v1", "mobilenet_v2"])
    parser.add_argument("--widths", nargs="+", default=list(WIDTHS))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7, help="interleaved pairs per row")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument(
        "--allocator",
        choices=["both", "system", "dslim"],
        default="both",
        help="glibc's default, dslim's setting, or both side by side (each in its own process)",
    )
    parser.add_argument("--json", action="store_true", help="print the rows as JSON (one allocator)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.json:
        print(json.dumps(rows(args)))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), batch {args.batch} at {args.size}px, "
          f"{args.warmup} warm-up + {args.repeats} interleaved pairs of forward + backward, load "
          f"{os.getloadavg()[0]:.1f}")  # fmt: skip
    start = time.perf_counter()
    allocators = ["system", "dslim"] if args.allocator == "both" else [args.allocator]
    results = {a: in_process(args, a) for a in allocators}
    head = " | ".join(f"{a}: supernet / static ms | ratio | sys ms" for a in allocators)
    print(f"| arch | width | {head} |")
    print("|---|---|" + "---:|---:|---:|" * len(allocators))
    for i, r in enumerate(results[allocators[0]]):
        cells = " | ".join(f"{x['supernet_ms']:.1f} / {x['static_ms']:.1f} | {x['ratio']:.3f} | "
                           f"{x['sys_ms'][0]:.0f} / {x['sys_ms'][1]:.0f}"
                           for x in (results[a][i] for a in allocators))  # fmt: skip
        print(f"| {r['arch']} | {r['width']} | {cells} |")
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
