"""Latency measured on this device: what `latency.json` holds (`dslim.deploy.latency_table` reads it back).

What is timed is what deployment runs: each subnet as the standalone module `dslim.extract` makes (physically
sliced, standard layers), each route of a dynamic model as its exported graphs run in sequence (the shared prefix
with the router, then that route's graphs: `execute` with the route's decisions forced). Weights are fresh (values
do not change the time of dense layers), so no BatchNorm statistics or data are needed. Each entry is the median of
its timed runs after warm-up ones, per batch size (`time_call`: as many runs as it takes the times to agree, within
the `repeats` and time budgets), the fastest such median of `ROUNDS` rounds over the table's subnets (a slow spell
of a shared machine must hit all of them), with the device, its thread count, OpenMP's wait policy and the
machine's load recorded alongside.

A searched subnet is in no table, so a table may also hold per-layer times (`layers`): every leaf layer of the
exported module timed in place at the channel counts of a few probe subnets (the named ones and random ones), a
non-negative least-squares fit per layer of its time against its channels, and a per-batch calibration of the
summed layer times against the probes' measured totals (the sum misses what runs between layers). Any subnet's
latency is then estimated from its layers' channel counts, the way Once-for-All's latency look-up tables let users
predict latency on their own device; `dslim.deploy.latency_table.LatencyTable.latency` answers a measured subnet
exactly and estimates the rest.
"""

from __future__ import annotations

import functools
import os
import platform
import random
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dslim.deploy.extraction import extract, extract_graphs
from dslim.deploy.runtime import execute
from dslim.models.base import Supernet
from dslim.models.complexity import measure
from dslim.subnet import Subnet
from dslim.ui import progress

FORMAT = "dslim.latency/1"


# -- timing ---------------------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


MIN_RUNS = 5
"""Timed runs every entry gets, however slow; more while they disagree by over `STABLE` (up to `repeats`)."""
STABLE = 0.05


def time_call(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int, budget: float = 1.0) -> float:
    """Median milliseconds of `fn()` over up to `repeats` timed runs after up to `warmup` untimed ones.

    Adaptive: timing stops once the last `MIN_RUNS` runs agree to within `STABLE` of the median (a quiet machine:
    more runs would not move the median), or once `budget` seconds are spent on the entry after `MIN_RUNS` runs; a
    noisy machine gets more runs, up to `repeats`. Warm-up stops after `budget / 4` seconds.
    """
    sync = _sync(device)
    with torch.inference_mode():
        began = time.perf_counter()
        for i in range(warmup):
            if i and time.perf_counter() - began > budget / 4:
                break
            fn()
        sync()
        times: list[float] = []
        spent = time.perf_counter()
        while len(times) < repeats:
            if len(times) >= MIN_RUNS:
                recent = times[-MIN_RUNS:]
                stable = max(recent) - min(recent) <= STABLE * statistics.median(times)
                if stable or time.perf_counter() - spent >= budget:
                    break
            start = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


ROUNDS = 2
"""Rounds over the list in which every subnet is timed whole (`whole_times`)."""


def whole_times(
    supernet: Supernet,
    subnets: Mapping[str, Subnet],
    size: int,
    batches: Sequence[int],
    device: torch.device,
    warmup: int,
    repeats: int,
    rounds: int = ROUNDS,
) -> dict[str, dict]:
    """`{name: {batch: ms}}`: each subnet timed (`time_module`) once per round, the rounds one after the other over
    the whole list, keeping its fastest median. A shared machine has slow spells (on this project's 2-core VM, up
    to a second of runs over 15% slow), and a table timed once was then off by as much for the subnet a spell hit.
    Rounds put each subnet's timings seconds apart, so a spell has to hit every one of them."""
    best: dict[str, dict] = {}
    todo = [name for _ in range(max(1, rounds)) for name in subnets]
    for name in progress(todo, f"latency ({len(subnets)} subnets, {max(1, rounds)} rounds)", len(todo)):
        ms = time_module(extract(supernet, subnets[name], weights=False), size, batches, device, warmup, repeats)
        best[name] = {b: min(t, best.get(name, ms)[b]) for b, t in ms.items()}
    return best


def device_info(device: torch.device) -> dict:
    """What the numbers were measured on: device, threads, processor, versions and the load at the time."""
    name = platform.processor() or platform.machine()
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    elif Path("/proc/cpuinfo").is_file():
        model = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]  # fmt: skip
        name = model[0] if model else name
    return {"type": device.type, "name": name, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "torch": torch.__version__,
            "load": [round(v, 2) for v in os.getloadavg()]}  # fmt: skip


def _images(batch: int, size: int, device: torch.device) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)


def time_module(model: nn.Module, size: int, batches: Sequence[int], device: torch.device, warmup: int,
                repeats: int) -> dict[str, float]:  # fmt: skip
    """Median ms of `model(images)` per batch size."""
    model = model.to(device).eval()
    out = {}
    for b in batches:
        x = _images(b, size, device)
        out[str(b)] = round(time_call(functools.partial(model, x), device, warmup, repeats), 4)
    return out


def route_timings(supernet: Supernet, size: int, batches: Sequence[int], device: torch.device, warmup: int,
                  repeats: int) -> tuple[dict, dict]:  # fmt: skip
    """Median ms of each route (its decisions forced for the whole batch: `program["routes"]`) and of each graph
    alone, per batch size, over the graphs of the model's export plan as standalone modules."""
    plan = supernet.export_plan()  # type: ignore[attr-defined]
    graphs = {name: g.to(device) for name, g in extract_graphs(supernet, plan.graphs, weights=False).items()}
    examples: dict[str, list] = {}

    def run(name: str, inputs: Sequence[torch.Tensor]) -> tuple:
        examples.setdefault(name, list(inputs))
        out = graphs[name](*inputs)
        return out if isinstance(out, tuple) else (out,)

    routes: dict = {name: {**route, "ms": {}} for name, route in plan.program["routes"].items()}
    per_graph: dict = {name: {"ms": {}} for name in graphs}
    first = next(iter(routes.values()), {"decisions": {}})["decisions"]
    for b in batches:
        x = _images(b, size, device)
        examples.clear()
        with torch.inference_mode():  # one pass through every graph: an input for each
            execute(plan.program, run, x, first, every_graph=True)
        for entry in routes.values():
            # every decision is forced, so `execute` never looks into the tensors: it runs on torch tensors as they are
            call = functools.partial(execute, plan.program, run, x, entry["decisions"])
            entry["ms"][str(b)] = round(time_call(call, device, warmup, repeats), 4)
        for name, g in graphs.items():
            call = functools.partial(g, *examples[name])
            per_graph[name]["ms"][str(b)] = round(time_call(call, device, warmup, repeats), 4)
    return routes, per_graph


# -- per-layer table ------------------------------------------------------------------------------------------------
class _Leaves:
    """Hooks on every leaf layer of a module recording, per call, its channels in and out and (if `timed`) its
    time. A layer called twice in one forward (a shared activation) gives two entries, `name#0` and `name#1`."""

    def __init__(self, model: nn.Module, device: torch.device, timed: bool) -> None:
        self.sync, self.timed = _sync(device), timed
        self.calls: dict[str, int] = defaultdict(int)
        self.shapes: dict[str, tuple[int, int]] = {}
        self.times: dict[str, float] = defaultdict(float)
        self.start = 0.0
        self.handles = []
        for name, m in model.named_modules():
            if name and next(m.children(), None) is None:
                self.handles.append(m.register_forward_pre_hook(self._pre))
                self.handles.append(m.register_forward_hook(lambda m, a, y, name=name: self._post(name, a, y)))

    def _pre(self, m: nn.Module, args: tuple) -> None:
        if self.timed:
            self.sync()
            self.start = time.perf_counter()

    def _post(self, name: str, args: tuple, y: torch.Tensor) -> None:
        if self.timed:
            self.sync()
            elapsed = time.perf_counter() - self.start
        key = f"{name}#{self.calls[name]}"
        self.calls[name] += 1
        x = args[0]
        self.shapes[key] = (int(x.shape[1]) if x.dim() > 1 else 1, int(y.shape[1]) if y.dim() > 1 else 1)
        if self.timed:
            self.times[key] += elapsed

    def forward(self, model: nn.Module, x: torch.Tensor) -> dict[str, float]:
        """One forward; the time of each entry in it (ms)."""
        self.calls.clear()
        self.times.clear()
        model(x)
        return {k: v * 1e3 for k, v in self.times.items()}

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def layer_times(model: nn.Module, size: int, batch: int, device: torch.device, warmup: int,
                repeats: int) -> dict[str, tuple[int, int, float]]:  # fmt: skip
    """`{entry: (c_in, c_out, median ms)}` for every leaf layer of `model`, timed in place."""
    leaves = _Leaves(model, device, timed=True)
    x = _images(batch, size, device)
    runs: dict[str, list[float]] = defaultdict(list)
    try:
        with torch.inference_mode():
            for i in range(warmup + repeats):
                times = leaves.forward(model, x)
                if i >= warmup:
                    for k, v in times.items():
                        runs[k].append(v)
    finally:
        leaves.remove()
    return {k: (*leaves.shapes[k], statistics.median(v)) for k, v in runs.items()}


def layer_shapes(model: nn.Module, size: int) -> dict[str, tuple[int, int]]:
    """`{entry: (c_in, c_out)}` of every leaf layer of `model` (one untimed forward of one image)."""
    device = next(model.parameters()).device
    leaves = _Leaves(model, device, timed=False)
    try:
        with torch.inference_mode():
            leaves.forward(model, _images(1, size, device))
    finally:
        leaves.remove()
    return dict(leaves.shapes)


def features(c_in, c_out):  # type: ignore[no-untyped-def]
    """What a layer's time is fitted on: a fixed overhead, its arithmetic (a product of channels for convs and
    linears) and its memory traffic (the tensors it reads and writes: linear in channels, all norms, activations and
    depthwise convs have). Floats or tensors (then differentiable)."""
    return [c_in * 0 + 1.0, c_in * c_out, c_in + c_out]


def predict(coef: Sequence[float], c_in: float, c_out: float) -> float:
    return max(0.0, float(np.dot(coef, features(c_in, c_out))))


def random_subnet(supernet: Supernet, rng: random.Random, bins: int, min_bin: int) -> Subnet:
    """A subnet with each group at a random allowed count (its choices, or `bins` bins of its widest width)."""
    choices = supernet.group_choices(bins, min_bin)
    return Subnet.of({g: rng.choice(c) for g, c in choices.items()})


def layer_table(supernet: Supernet, probes: Mapping[str, Subnet], totals: Mapping[str, Mapping[str, float]],
                size: int, batches: Sequence[int], device: torch.device, warmup: int, repeats: int,
                rounds: int = ROUNDS) -> dict:  # fmt: skip
    """Per-layer times of the `probes` subnets (each layer's fastest over `rounds` rounds over the probes, as
    `whole_times`), a fit per layer and batch, and the calibration of their sum against the probes' measured `totals`
    (`{probe: {batch: ms}}`)."""
    timed: dict[str, dict[str, dict]] = {}
    todo = [name for _ in range(max(1, rounds)) for name in probes]
    for name in progress(todo, f"per-layer times ({len(probes)} subnets, {max(1, rounds)} rounds)", len(todo)):
        model = extract(supernet, probes[name], weights=False).to(device)
        now = {str(b): layer_times(model, size, b, device, warmup, repeats) for b in batches}
        before = timed.setdefault(name, now)
        for b, layers in now.items():
            before[b] = {k: (*v[:2], min(v[2], before[b][k][2])) for k, v in layers.items()}
    points: dict[str, list] = defaultdict(list)
    for name, per_batch in timed.items():
        for key, (c_in, c_out, _) in per_batch[str(batches[0])].items():
            points[key].append([c_in, c_out, {b: round(t[key][2], 5) for b, t in per_batch.items()}, name])
    from scipy.optimize import nnls

    fits = {}
    for key, pts in points.items():
        X = np.array([features(p[0], p[1]) for p in pts])
        # non-negative coefficients: more channels never make a layer faster, and noise cannot say otherwise
        fits[key] = {str(b): nnls(X, np.array([p[2][str(b)] for p in pts]))[0].tolist() for b in batches}
    sums: dict[str, dict[str, float]] = defaultdict(dict)
    for key, pts in points.items():
        for p in pts:
            for b in p[2]:
                sums[p[3]][b] = sums[p[3]].get(b, 0.0) + predict(fits[key][b], p[0], p[1])
    calibration = {}
    for b in map(str, batches):
        X = np.array([[sums[n][b], 1.0] for n in probes])
        y = np.array([totals[n][b] for n in probes])
        # non-negative too: on a busy machine a free fit can turn negative, and estimates would then fall as
        # subnets grow (time outside the layers, the offset, is never negative either)
        scale, offset = nnls(X, y)[0] if len(probes) > 1 else (y[0] / X[0, 0], 0.0)
        calibration[b] = [float(scale), float(offset)]
    return {"probes": {n: s.to_json() for n, s in probes.items()}, "totals": dict(totals), "points": dict(points),
            "fits": fits,
            "calibration": calibration}  # fmt: skip


# -- the table ------------------------------------------------------------------------------------------------------
def measure_table(supernet: Supernet, subnets: Mapping[str, Subnet], size: int, batches: Sequence[int],
                  device: torch.device, warmup: int = 3, repeats: int = 15, layers: int = 0, bins: int = 12,
                  min_bin: int = 1, seed: int = 0, checks: int = 0, rounds: int = ROUNDS) -> dict:  # fmt: skip
    """The content of `latency.json`: every subnet (and route, and graph of a dynamic model) at every batch size;
    with `layers`, a per-layer table from the subnets and `layers` random subnets, and `checks` more random subnets
    measured apart (`checks`), never fitted on: what the table's error is judged on. Every subnet is timed whole in
    `rounds` rounds over the list and keeps its fastest (`whole_times`)."""
    load_before = device_info(device)["load"]
    rng = random.Random(seed)
    probes = {f"probe-{i}": random_subnet(supernet, rng, bins, min_bin) for i in range(layers)}
    held = {f"check-{i}": random_subnet(supernet, rng, bins, min_bin) for i in range(checks if layers else 0)}
    first: dict[Subnet, str] = {}  # two names of one subnet (`smallest` is `uniform-0`): timed once
    for name, subnet in subnets.items():
        first.setdefault(subnet, name)
    timed = {**{name: subnet for subnet, name in first.items()}, **probes, **held}
    ms = whole_times(supernet, timed, size, batches, device, warmup, repeats, rounds)
    rows = {name: {"subnet": subnet.to_json(), "macs": measure(supernet, size, subnet).macs, "ms": ms[first[subnet]]}
            for name, subnet in subnets.items()}  # fmt: skip
    table = {"format": FORMAT, "arch": supernet.arch, "input_size": size, "batches": list(batches),
             "warmup": warmup, "repeats": repeats, "subnets": rows}  # fmt: skip
    if supernet.is_dynamic:
        table["routes"], table["graphs"] = route_timings(supernet, size, batches, device, warmup, repeats)
    if layers:
        totals = {n: r["ms"] for n, r in rows.items()} | {n: ms[n] for n in probes}
        table["layers"] = layer_table(supernet, {**subnets, **probes}, totals, size, batches, device, warmup, repeats,
                                      rounds)  # fmt: skip
        table["checks"] = {name: {"subnet": subnet.to_json(), "macs": measure(supernet, size, subnet).macs,
                                  "ms": ms[name]} for name, subnet in held.items()}  # fmt: skip
    table["device"] = {**device_info(device), "load_before": load_before}
    return table
