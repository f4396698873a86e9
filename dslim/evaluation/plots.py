"""Plots of a run's results, written atomically as PNG: accuracy against MACs (`pareto.png`), a dynamic model's
decision histograms, and a search's greedy path (`search/search.png`)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from dslim.io import atomic_write

if TYPE_CHECKING:
    from dslim.methods.autoslim import Step


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


def plot_search(path: str | os.PathLike, steps: Sequence[Step], reference: Sequence[dict], found: dict[str, int],
                targets: Sequence[float]) -> None:  # fmt: skip
    """The greedy path's MACs against held-out top-1, the reference subnets beside it, the targets marked."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.8), dpi=120)
    ax = fig.add_subplot()
    ax.plot([s.macs / 1e6 for s in steps], [s.score.top1 for s in steps], "-", color="C0", lw=1.2,
            label="greedy path")  # fmt: skip
    rows = sorted(reference, key=lambda r: r["macs"])
    ax.plot([r["macs"] / 1e6 for r in rows], [r["holdout_top1"] for r in rows], "s--", color="C1", ms=4,
            label="named subnets (uniform widths)")  # fmt: skip
    for t in targets:
        ax.axvline(t / 1e6, color="grey", ls=":", lw=0.8)
    for name, i in found.items():
        ax.plot(steps[i].macs / 1e6, steps[i].score.top1, "o", color="C3", ms=6)
        ax.annotate(name, (steps[i].macs / 1e6, steps[i].score.top1), textcoords="offset points", xytext=(4, -12),
                    fontsize=7)  # fmt: skip
    ax.set_xlabel("MACs (M)")
    ax.set_ylabel("held-out top-1 (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
