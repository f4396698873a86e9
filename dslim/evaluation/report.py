"""The evaluation report: `eval.json` (with its plots, `dslim.evaluation.plots`) and the table printed for users.

Evaluating more subnets of a run adds to its report: rows of the same subnet are replaced, the others kept, so a
later `dslim.evaluate --widths 0.42` never destroys the pipeline's evaluation.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from dslim.evaluation.plots import plot_histogram, plot_pareto
from dslim.io import write_json
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
