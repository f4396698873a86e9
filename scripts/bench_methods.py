"""Each method's claim, measured on the harder built-in set `digits-hard`: one table (mean and spread over seeds)
and one accuracy-vs-MACs plot with every method's points.

    python scripts/bench_methods.py [--methods dsnet snet usnet autoslim dmcp blockdrop] [--seeds 0 1]
        [--runs runs/bench_methods] [--threads 2] [--plot methods.png] [--tiny]

What is measured per seed (the recipes are `recipes/<method>_hard.py`):
- dsnet: the dynamic model's top-1 minus that of the cheapest uniform subnet with at least its mean MACs; routes
  used by at least 5% of the validation images; the rank correlation of image difficulty with route width.
- snet: each switchable width's top-1 minus that of a network of that width trained alone (`--model.widths W
  --model.max-width W`); the claim (sharing the weights costs no accuracy) holds when no width is more than a
  point below, so a switchable width that beats its network trained alone counts as holding.
- usnet: widths between the named ones (calibrated on the fly by `dslim.evaluate`) minus the line, in MACs,
  through their named neighbours.
- autoslim: each searched subnet retrained minus the uniform width just above its MACs retrained the same way.
- dmcp: the sampled subnet retrained minus uniform width 0.6 (3.07M MACs, just above the 3M target) retrained.
- blockdrop: the full network's top-1 minus the routed model's, and the share of blocks the policy skips.

Every training is one `dslim.train` command, printed before it runs, one after another, with `OMP_NUM_THREADS`
fixed; a finished run is reused (the same command resumes), so an interrupted benchmark continues where it stopped.
`--tiny` trains every stage for one epoch on 374 of the training images (AutoSlim: all but its 300 held-out
ones): a check that this script works, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

UNIFORM_DMCP = "0.6"
"""MobileNet v2's uniform width just above `dmcp_hard`'s 3M MACs target (3.07M at 32px)."""
AUTOSLIM_UNIFORM = ("0.375", "0.5", "0.75")
"""The uniform widths just above `autoslim_hard`'s targets 1.5M, 3M and 6M MACs, in that order."""
USNET_BETWEEN = ("0.375", "0.625", "0.875")
NAMED_WIDTHS = ("0.25", "0.5", "0.75", "1.0")
"""The widths `snet_hard` trains and `usnet_hard` names."""


class Bench:
    """Runs the trainings of one seed into `runs/<name>-s<seed>` and reads their results."""

    def __init__(self, runs: Path, seed: int, threads: int, tiny: bool, cache_dir: str | None) -> None:
        self.runs, self.seed, self.threads, self.tiny = runs, seed, threads, tiny
        self.data = ["--data.cache-dir", cache_dir] if cache_dir else []
        self.cpu_seconds: dict[str, float] = {}
        """CPU seconds (user + system) of each command, by run name."""

    def command(self, name: str, module: str, *args: str) -> str:
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads)}
        print("$", "OMP_NUM_THREADS=" + str(self.threads), "python -m", module, *args, flush=True)
        before = os.times()
        done = subprocess.run([sys.executable, "-m", module, *args], env=env, capture_output=True, text=True)
        after = os.times()
        if done.returncode != 0:
            sys.exit(f"failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        used = after.children_user + after.children_system - before.children_user - before.children_system
        self.cpu_seconds[name] = self.cpu_seconds.get(name, 0.0) + round(used, 1)
        return done.stdout

    def train(self, recipe: str, name: str, *overrides: str) -> dict:
        """The run's eval.json; trains it first unless it is finished."""
        out = self.runs / f"{name}-s{self.seed}"
        if not (out / "eval.json").exists():
            from dslim import recipes

            config = recipes.load(recipe)
            # A recipe's own held-out images (AutoSlim's search set) are kept: the search scores on all of them.
            tiny = ["--data.holdout", "2500"] if self.tiny and not config.data.holdout else []
            for stage in config.pipeline if self.tiny else ():
                settings = getattr(config.stages, stage)
                # BlockDrop's curriculum needs its epochs to reach every block (a few steps each here).
                if hasattr(settings, "epochs") and not hasattr(settings, "curriculum_blocks"):
                    tiny += [f"--stages.{stage}.epochs", "1"]
            if self.tiny and "sample" in config.pipeline:  # one DMCP epoch is far from its target: take any walk
                tiny += ["--stages.sample.tolerance", "1.0"]
            args = ["--recipe", recipe, "--out-dir", str(out), "--seed", str(self.seed), *self.data, *tiny, *overrides]
            self.command(name, "dslim.train", *args)
        return json.loads((out / "eval.json").read_text())

    def evaluate(self, name: str, widths: tuple[str, ...]) -> dict:
        out = self.runs / f"{name}-s{self.seed}"
        return json.loads(self.command(name, "dslim.evaluate", "--run", str(out), "--widths", *widths, "--json"))


def rows(report: dict) -> dict[str, dict]:
    return {row["subnet"]: row for row in report["subnets"]}


def dsnet(bench: Bench) -> tuple[dict, list]:
    report = bench.train("dsnet_hard", "dsnet")
    dynamic, static = report["dynamic"], rows(report)
    uniform = sorted((r for n, r in static.items() if n.startswith("uniform-")), key=lambda r: r["macs"])
    above = next((r for r in uniform if r["macs"] >= dynamic["macs_mean"]), uniform[-1])
    routes, difficulty = routes_and_difficulty(bench.runs / f"dsnet-s{bench.seed}")
    share = np.bincount(routes) / len(routes)
    values = {
        "dynamic - uniform above (top-1)": dynamic["top1"] - above["top1"],
        "routes used (>= 5%)": float((share >= 0.05).sum()),
        "corr(difficulty, route)": spearman(difficulty, routes),
    }
    holds = values["dynamic - uniform above (top-1)"] > 0 and values["routes used (>= 5%)"] >= 2
    points = [("dsnet uniform", r["macs"], r["top1"]) for r in uniform] + [
        ("dsnet dynamic", dynamic["macs_mean"], dynamic["top1"])
    ]
    return {**values, "holds": holds and values["corr(difficulty, route)"] > 0}, points


def routes_and_difficulty(run: Path) -> tuple[np.ndarray, np.ndarray]:
    """The route the trained gate picks for each validation image, and that image's recorded difficulty."""
    import torch

    from dslim.data import build_loader, resolve_root
    from dslim.data.digits_hard import difficulties
    from dslim.stages.run import open_run

    opened = open_run(run)
    net, data = opened.supernet, opened.config.data
    loader = build_loader(data, "val", opened.config.model.input_size)
    root = resolve_root(data)
    recorded = difficulties(root)
    decisions = []
    with net.using(train=False), torch.no_grad():
        for images, _ in loader:
            decisions.append(net.forward_routed(images)[1])
    names = [str(Path(n).relative_to(root)) for n in loader.images.names]
    return torch.cat(decisions).numpy(), np.array([recorded[n] for n in names])


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation (ties ranked by their mean rank), 0 when either side is constant."""
    from scipy.stats import spearmanr

    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


def snet(bench: Bench) -> tuple[dict, list]:
    joint = rows(bench.train("snet_hard", "snet"))
    values, points = {}, []
    for w in NAMED_WIDTHS:
        alone = rows(bench.train("snet_hard", f"snet-alone-{w}", "--model.widths", w, "--model.max-width", w))[w]
        values[f"switchable - alone @{w}"] = joint[w]["top1"] - alone["top1"]
        points.append(("snet alone", alone["macs"], alone["top1"]))
    points += [("snet switchable", joint[w]["macs"], joint[w]["top1"]) for w in NAMED_WIDTHS]
    return {**values, "holds": all(v >= -1.0 for v in values.values())}, points


def usnet(bench: Bench) -> tuple[dict, list]:
    report = rows(bench.train("usnet_hard", "usnet"))  # with the between widths once evaluated
    evaluated = rows(bench.evaluate("usnet", USNET_BETWEEN))  # eval.json's other rows come back too
    between = {w: evaluated[w] for w in USNET_BETWEEN}
    trained = sorted((report[w] for w in NAMED_WIDTHS), key=lambda r: r["macs"])
    macs, top1 = [r["macs"] for r in trained], [r["top1"] for r in trained]
    values = {f"@{w} - curve": between[w]["top1"] - float(np.interp(between[w]["macs"], macs, top1)) for w in between}
    points = [("usnet named", r["macs"], r["top1"]) for r in trained]
    points += [("usnet between", r["macs"], r["top1"]) for r in between.values()]
    return {**values, "holds": all(v >= -1.0 for v in values.values())}, points


def retrained_against_uniform(
    bench: Bench, recipe: str, name: str, found: list[dict], uniform: tuple[str, ...], *overrides: str
) -> tuple[dict, list]:
    """Found subnets (cheapest first) against the uniform widths `uniform` retrained alike, pair by pair."""
    baseline = rows(bench.train(recipe, f"{name}-uniform", "--pipeline", "retrain", "evaluate",
                                "--stages.retrain.subnets", *uniform, *overrides))  # fmt: skip
    values = {
        f"{f['subnet']} - {u} (top-1)": f["top1"] - baseline[u]["top1"] for f, u in zip(found, uniform, strict=True)
    }
    points = [(f"{name} found", f["macs"], f["top1"]) for f in found]
    points += [(f"{name} uniform", baseline[u]["macs"], baseline[u]["top1"]) for u in uniform]
    return values, points


def autoslim(bench: Bench) -> tuple[dict, list]:
    report = rows(bench.train("autoslim_hard", "autoslim"))
    found = sorted((r for n, r in report.items() if n.startswith("autoslim-")), key=lambda r: r["macs"])
    values, points = retrained_against_uniform(bench, "autoslim_hard", "autoslim", found, AUTOSLIM_UNIFORM)
    return {**values, "holds": all(v > 0 for v in values.values())}, points


def dmcp(bench: Bench) -> tuple[dict, list]:
    found = [rows(bench.train("dmcp_hard", "dmcp"))["dmcp-expected"]]
    widths = ("--model.widths", UNIFORM_DMCP, "1.0")
    values, points = retrained_against_uniform(bench, "dmcp_hard", "dmcp", found, (UNIFORM_DMCP,), *widths)
    return {**values, "holds": all(v >= -0.5 for v in values.values())}, points


def blockdrop(bench: Bench) -> tuple[dict, list]:
    report = bench.train("blockdrop_hard", "blockdrop")
    full, routed = rows(report)["largest"], report["dynamic"]
    values = {
        "full - routed (top-1)": full["top1"] - routed["top1"],
        "blocks skipped (%)": 100 * (1 - routed["blocks_mean"] / routed["blocks_total"]),
    }
    points = [("blockdrop full", full["macs"], full["top1"]), ("blockdrop routed", routed["macs_mean"], routed["top1"])]
    return {**values, "holds": values["full - routed (top-1)"] <= 1.0 and values["blocks skipped (%)"] >= 20}, points


METHODS: dict[str, tuple[str, Callable[[Bench], tuple[dict, list]]]] = {
    "dsnet": ("dynamic beats the uniform subnet of >= its MACs; > 1 route; harder images wider", dsnet),
    "snet": ("no switchable width more than a point below that width trained alone", snet),
    "usnet": ("widths between the named ones, calibrated, no more than a point below the curve", usnet),
    "autoslim": ("searched subnets beat uniform widths of >= their MACs, both retrained", autoslim),
    "dmcp": ("the sampled subnet ties (within half a point) or beats the uniform width of >= its MACs", dmcp),
    "blockdrop": ("routed within a point of the full network, skipping >= 20% of the blocks", blockdrop),
}


def spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:+.2f} ± {sd:.2f}"


def plot(points: dict[str, dict[int, list[tuple[float, float]]]], path: Path) -> None:
    """Every method's points, each the mean over seeds of its MACs and top-1 with the top-1's spread as an error bar
    (a searched subnet's MACs differ a little between seeds, so points are matched by their place in the method's
    list, not by MACs); one marker and colour per kind of point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    colours = plt.get_cmap("tab20").colors
    for i, (label, by_place) in enumerate(sorted(points.items())):
        xy = sorted(
            (statistics.fmean(m for m, _ in runs), statistics.fmean(t for _, t in runs),
             statistics.stdev(t for _, t in runs) if len(runs) > 1 else 0.0)
            for runs in by_place.values()
        )  # fmt: skip
        ax.errorbar([x / 1e6 for x, _, _ in xy], [y for _, y, _ in xy], yerr=[e for _, _, e in xy], capsize=3,
                    marker="osD^v<>*"[i % 8], linestyle="-" if len(xy) > 1 else "", label=label,
                    color=colours[(2 * i) % 20 + (2 * i) // 20])  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("MACs (M, log scale)")
    ax.set_ylabel("top-1 on digits-hard val (%), mean and sd over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--runs", type=Path, default=Path("runs/bench_methods"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--plot", type=Path, default=Path("methods.png"))
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--cache-dir", help="where the built-in data are written (default: dslim's)")
    args = parser.parse_args()

    results: dict[str, list[dict]] = {m: [] for m in args.methods}
    points: dict[str, dict[int, list[tuple[float, float]]]] = {}
    start = time.time()
    for seed in args.seeds:
        for method in args.methods:
            bench = Bench(args.runs, seed, args.threads, args.tiny, args.cache_dir)
            values, found = METHODS[method][1](bench)
            results[method].append(values)
            for place, (label, macs, top1) in enumerate(found):
                points.setdefault(label, {}).setdefault(place, []).append((macs, top1))
            print(f"{method} seed {seed}: {values}; CPU seconds of its commands: {bench.cpu_seconds}", flush=True)

    print(f"\ndigits-hard, seeds {args.seeds}, OMP_NUM_THREADS={args.threads}, {time.time() - start:.0f} s wall"
          + (" (--tiny: not a measurement)" if args.tiny else ""))  # fmt: skip
    print(f"| method | claim | measured (mean ± sd over {len(args.seeds)} seeds) | holds |")
    print("|---|---|---|---|")
    for method, per_seed in results.items():
        measured = "; ".join(f"{k} {spread([v[k] for v in per_seed])}" for k in per_seed[0] if k != "holds")
        holds = sum(v["holds"] for v in per_seed)
        print(f"| {method} | {METHODS[method][0]} | {measured} | {holds}/{len(per_seed)} seeds |")
    plot(points, args.plot)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
