"""The evaluation report: `eval.json`, the accuracy-vs-MACs plot, and the table printed for users.

Evaluating more subnets of a run adds to its report: rows of the same subnet are replaced, the others kept, so a
later `dslim.evaluate --widths 0.42` never destroys the pipeline's evaluation.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from dslim.io import atomic_write, write_json
from dslim.ui import print_table


def merge(old: dict | None, rows: list[dict], dynamic: dict | None) -> dict:
    """`old` report with `rows` replacing rows of the same subnets and `dynamic` replacing its dynamic row."""
    report: dict = {"subnets": list((old or {}).get("subnets", []))}
    names = {r["subnet"] for r in rows}
    report["subnets"] = [r for r in report["subnets"] if r.get("subnet") not in names] + rows
    if dynamic is not None:
        report["dynamic"] = dynamic
    elif old and "dynamic" in old:
        report["dynamic"] = old["dynamic"]
    return report


def write_report(out_dir: str | os.PathLike, rows: list[dict], dynamic: dict | None = None) -> dict:
    """Add `rows` (and the `dynamic` row) to `out_dir/eval.json` (atomically), redraw `out_dir/pareto.png` and each
    histogram of the dynamic row (`<name>.png`)."""
    out_dir = Path(out_dir)
    path = out_dir / "eval.json"
    old = None
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = None  # a report that cannot be read is replaced, not merged into
    report = merge(old if isinstance(old, dict) else None, rows, dynamic)
    write_json(path, report)
    plot_pareto({out_dir.resolve().name: report}, out_dir / "pareto.png")
    for name, histogram in report.get("dynamic", {}).get("histograms", {}).items():
        plot_histogram(histogram, out_dir / f"{name}.png")
    return report


def plot_histogram(histogram: dict, path: str | os.PathLike) -> None:
    """Bars of a dynamic row's histogram: `{"label": x-axis label, "counts": {bin: count}}`."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.6), dpi=120)
    ax = fig.add_subplot()
    bins = list(histogram["counts"])
    ax.bar(range(len(bins)), list(histogram["counts"].values()), color="C0")
    ax.set_xticks(range(len(bins)), bins, rotation=90 if len(bins) > 20 else 0, fontsize=8 if len(bins) > 20 else 10)
    ax.set_xlabel(histogram["label"])
    ax.set_ylabel("images")
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def plot_pareto(runs: Mapping[str, dict], path: str | os.PathLike) -> None:
    """Top-1 against MACs, one curve per run (`label -> eval.json` content); a star marks a dynamic model."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.8), dpi=120)
    ax = fig.add_subplot()
    for i, (label, report) in enumerate(runs.items()):
        color = f"C{i % 10}"
        rows = sorted(report.get("subnets", []), key=lambda r: r["macs"])
        ax.plot([r["macs"] / 1e6 for r in rows], [r["top1"] for r in rows], "o-", color=color, label=label, ms=4)
        dynamic = report.get("dynamic")
        if dynamic is not None:
            ax.plot(dynamic["macs_mean"] / 1e6, dynamic["top1"], "*", color=color, ms=14, mec="black",
                    label=f"{label} (dynamic)")  # fmt: skip
    ax.set_xlabel("MACs (M)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(True, alpha=0.3)
    if runs:
        ax.legend(loc="lower right")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def print_results(rows: list[dict], dynamic: dict | None, title: str) -> None:
    """The report as a table: one line per subnet, one for the dynamic model, then the dynamic model's summary
    lines and its decision histograms."""
    shown = rows + ([{**dynamic, "subnet": "dynamic", "macs": dynamic["macs_mean"]}] if dynamic else [])
    print_table(
        title,
        ("subnet", "MACs (M)", "params (M)", "top-1 (%)", "top-5 (%)"),
        [(r["subnet"], f"{r['macs'] / 1e6:,.1f}", f"{r['params'] / 1e6:,.3f}", f"{r['top1']:.2f}", f"{r['top5']:.2f}")
         for r in shown],
    )  # fmt: skip
    if dynamic:
        for line in dynamic.get("summary", []):
            print(line)
        for histogram in dynamic.get("histograms", {}).values():
            counts = histogram["counts"].items()
            print(f"{histogram['label']}: " + ", ".join(f"{k}: {v}" for k, v in counts if v))
        for key, value in dynamic.items():
            if isinstance(value, dict) and key not in ("route_macs", "histograms"):
                print(f"{key}: " + ", ".join(f"{k} {v}" for k, v in value.items()))
