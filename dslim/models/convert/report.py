"""What a conversion found, in words: the channel groups, and every layer left at full width with the reason.

`report` is computed once, at conversion, and stored with the graph, so a reloaded supernet describes itself.
"""

from __future__ import annotations

import numpy as np

from dslim.models.convert.analysis import Analysis
from dslim.models.convert.groups import Solution, layout


def report(an: Analysis, sol: Solution) -> dict:
    """`{"groups": [{name, channels, step, layers}], "fixed": [{layer, type, channels, fixed, why}]}`."""
    layers_of: dict[int, list[str]] = {i: [] for i in range(len(sol.groups))}
    for path, layer in an.layers.items():
        if layer.spec["type"] in ("Param", "Split", "Op"):
            continue
        for site in layer.sites.values():
            g, _ = layout(sol, an.sites[site])
            for i in np.unique(g[g >= 0]).tolist():
                if path not in layers_of[i]:
                    layers_of[i].append(path)
    groups = [{"name": g["name"], "channels": g["classes"] * g["unit"], "step": g["unit"], "layers": layers_of[i]}
              for i, g in enumerate(sol.groups)]  # fmt: skip
    alone = an.atoms.solve(pins=False)
    reasons: dict[int, list[str]] = {}
    for atoms, why in an.atoms.pins:
        for c in np.unique(alone[atoms]).tolist():
            if why not in reasons.setdefault(c, []):
                reasons[c].append(why)
    fixed = []
    for path, layer in an.layers.items():
        if layer.origin is None:
            continue
        free = np.array([int(sol.classes[a]) in sol.group_of for a in layer.origin.tolist()])
        if free.all():
            continue
        why: list[str] = []
        for c in np.unique(alone[layer.origin[~free]]).tolist():
            why += [w for w in reasons.get(c, []) if w not in why]
        fixed.append(
            {
                "layer": path,
                "type": layer.spec["type"],
                "channels": int(len(free)),
                "fixed": int((~free).sum()),
                "why": why[:3] or ["tied to nothing that can change width"],
            }
        )
    return {"groups": groups, "fixed": fixed}


def describe(net) -> str:  # type: ignore[no-untyped-def]
    """Text of a converted supernet's report."""
    graph = net.arch_kwargs["graph"]
    rep = graph.get("report", {"groups": [], "fixed": []})
    layers = sum(1 for s in graph["modules"].values() if s["type"] in ("Conv2d", "ConvTranspose2d", "Linear"))
    lines = [f"{graph.get('name', 'model')}: {layers} conv/linear layers, {len(rep['groups'])} channel groups"]
    width = max([len(g["name"]) for g in rep["groups"]] + [5])
    lines.append(f"  {'group':<{width}}  channels  step  layers")
    for g in rep["groups"]:
        shown = ", ".join(g["layers"][:6]) + (f", ... ({len(g['layers'])} layers)" if len(g["layers"]) > 6 else "")
        lines.append(f"  {g['name']:<{width}}  {g['channels']:>8}  {g['step']:>4}  {shown}")
    if rep["fixed"]:
        lines.append("at full width:")
        for f in rep["fixed"]:
            part = "" if f["fixed"] == f["channels"] else f" ({f['fixed']} of them)"
            lines.append(f"  {f['layer']} ({f['type']}, {f['channels']} channels{part}): {'; '.join(f['why'])}")
    return "\n".join(lines)
