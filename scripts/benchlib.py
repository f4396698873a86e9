"""What the routed-inference benchmarks share: timing two models side by side, and the table they print.

On a machine shared with other work, a timing includes waiting for a core. So the two sides run in one process,
alternating (the order flips every repeat), and a row reports the median over repeats of the per-repeat ratio,
which cancels slow drifts of the machine's load, for wall time and for CPU time (`time.process_time`, which leaves
out the time spent waiting for a core but not the slowdown of sharing caches). The load (`os.getloadavg`) is printed
before and after. The goal is judged on wall time, the CPU-time ratio is printed beside it: when the two disagree,
the machine was busy.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class Pair:
    """Medians of a static and a routed side timed alternately: seconds per repeat, and per-repeat ratios."""

    static_wall: float
    routed_wall: float
    static_cpu: float
    routed_cpu: float
    speedup_wall: float
    """Median over repeats of static / routed wall time."""
    speedup_cpu: float


def timed_pair(static: Callable[[], object], routed: Callable[[], object], repeats: int, warmup: int = 1) -> Pair:
    """Alternate `static()` and `routed()` `repeats` times after `warmup` untimed calls of each."""
    for _ in range(warmup):
        static(), routed()
    wall: tuple[list[float], list[float]] = ([], [])
    cpu: tuple[list[float], list[float]] = ([], [])
    for i in range(repeats):
        for k in (0, 1) if i % 2 == 0 else (1, 0):
            w, c = time.perf_counter(), time.process_time()
            (static, routed)[k]()
            wall[k].append(time.perf_counter() - w)
            cpu[k].append(time.process_time() - c)
    med = statistics.median
    return Pair(med(wall[0]), med(wall[1]), med(cpu[0]), med(cpu[1]), med(a / b for a, b in zip(*wall)),
                med(a / b for a, b in zip(*cpu)))  # fmt: skip


def weight_mb(module) -> float:  # type: ignore[no-untyped-def]
    """Megabytes of a module's parameters and buffers, each storage counted once (shared parts are shared)."""
    tensors = [*module.parameters(), *module.buffers()]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values()) / 2**20


def load() -> str:
    """The machine's load averages over 1, 5 and 15 minutes, as `uptime` prints them."""
    return ", ".join(f"{v:.2f}" for v in os.getloadavg())


HEADER = (
    "| model | batch | static ms/batch | routed ms/batch | speed-up | MAdds speed-up | ratio | CPU ratio | goal |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---|"
)


def row(model: str, batch: int, pair: Pair, batches: int, macs_speedup: float, goal: float) -> tuple[str, bool]:
    """A table row (times per batch; `batches` batches per repeat) and whether the wall-time ratio meets `goal`."""
    ratio, cpu_ratio = pair.speedup_wall / macs_speedup, pair.speedup_cpu / macs_speedup
    met = ratio >= goal
    text = (f"| {model} | {batch} | {pair.static_wall / batches * 1e3:.2f} | {pair.routed_wall / batches * 1e3:.2f} | "
            f"{pair.speedup_wall:.3f} | {macs_speedup:.3f} | **{ratio:.3f}** | {cpu_ratio:.3f} | "
            f"{'met' if met else 'NOT met'} (>= {goal}) |")  # fmt: skip
    return text, met


def verdict(met: list[list[bool]], goal: float) -> str:
    """The closing line: in how many of the runs every row met the goal."""
    good = sum(all(run) for run in met)
    return (f"goal (speed-up / MAdds speed-up >= {goal} in every row): met in {good} of {len(met)} run(s)"
            f"{'' if good == len(met) else ' -- NOT MET'}")  # fmt: skip


def batches(model, x, batch: int) -> None:  # type: ignore[no-untyped-def]
    """`model` on `x` (a tensor or an array) in batches of `batch`."""
    for i in range(0, len(x), batch):
        model(x[i : i + batch])


def measure(models: Sequence[tuple[str, Callable, Callable, Any, float]], runs: int, repeats: int, goal: float) -> None:
    """`runs` whole measurements in a row, each a table of every (name, static, routed, images, MAdds speed-up) at
    batch 1 and 64; then the verdict line."""
    met: list[list[bool]] = []
    for run in range(runs):
        print(f"\nrun {run + 1} of {runs} (load {load()})\n{HEADER}")
        met.append([])
        for name, static, routed, x, macs_speedup in models:
            for batch in (1, 64):
                pair = timed_pair(partial(batches, static, x, batch), partial(batches, routed, x, batch), repeats)
                text, ok = row(name, batch, pair, len(x) // batch, macs_speedup, goal)
                print(text)
                met[-1].append(ok)
    print(f"\nload {load()}; {verdict(met, goal)}")


def _flops(fn: Callable[[], object]) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def _per_graph(routed, images: Sequence[Any], kind: Callable[[str], str], cost: Callable) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """`cost(run)` of each graph call `routed` makes on `images` (`run()` makes the call), summed per kind."""
    run_graph, spent = routed.run_graph, {}

    def costed(name, inputs):  # type: ignore[no-untyped-def]
        out: list = []
        part = kind(name) if isinstance(name, str) else "chain (a route's graphs in one call)"
        spent[part] = spent.get(part, 0.0) + cost(lambda: out.append(run_graph(name, inputs)))
        return out[0]

    routed.run_graph = costed
    try:
        for im in images:
            routed(im)
    finally:
        routed.run_graph = run_graph
    return spent


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def breakdown(routed, static, groups: Sequence[tuple[int, Sequence[Any]]], repeats: int,
              kind: Callable[[str], str] = lambda name: name) -> None:  # type: ignore[no-untyped-def]  # fmt: skip
    """Where a deployed dynamic model's time goes: per kind of graph it runs (`kind(name)`; the rest is the routing
    program itself: gather, scatter, Python), its share of the static model's time on the same images beside its
    share of the static model's MAdds. A part whose time share exceeds its MAdds share caps the ratio whatever the
    routing costs. `groups` are (batch size, the batches of images) pairs; times are medians of `repeats`."""
    print("\nwhere the routed time goes (median of repeats; share of the static model's time | of its MAdds)")
    for batch, images in groups:
        macs = _per_graph(routed, images, kind, _flops)
        static_macs = sum(_flops(partial(static, im)) for im in images)
        static_s: list[float] = []
        spent: dict[str, list[float]] = {}
        for _ in range(repeats):
            static_s.append(sum(_seconds(partial(static, im)) for im in images))
            per: dict[str, float] = {}  # graph times and the whole pass's time, from the same pass
            total = _seconds(lambda: per.update(_per_graph(routed, images, kind, _seconds)))  # noqa: B023
            for name, t in {**per, "routing (gather, scatter, Python)": total - sum(per.values())}.items():
                spent.setdefault(name, []).append(t)
        base = statistics.median(static_s)
        print(f"batch {batch}: static {1000 * base / len(images):.2f} ms/batch")
        for name, ts in spent.items():
            share = f"{macs[name] / static_macs:.3f}" if name in macs else "-"
            print(f"  {name:<34} time {statistics.median(ts) / base:.3f} | MAdds {share}")
