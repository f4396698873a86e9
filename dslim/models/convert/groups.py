"""From tied atoms to channel groups, ranks and stored layouts.

Atoms always active together form a class. The classes a layer's output holds are sliced by one count, so classes
that share a layer output (its *origin*) form one channel group; a class reached by no layer output (an image
channel, a parameter tied to nothing) or pinned stays active in every subnet. A group with `n` channels keeps its
first `n / unit` classes in rank order: the order of its widest layer output, balanced so that every part of a
channel split keeps its share (a class's rank key is its largest relative position in any layer output or split
part), or, with channel importance, the most important first. `unit` is the channels each class holds in that layer
output (a grouped convolution's block: its width moves in whole blocks).

A layout is, for every position of a tensor's channel dimension, its group (-1: always active) and the rank of its
class; stored as runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from dslim.models.convert import atoms as A
from dslim.models.convert.analysis import Analysis


@dataclass
class Solution:
    classes: np.ndarray
    """Class of every atom."""
    group_of: dict[int, int]
    """Class -> group index."""
    rank_of: dict[int, int]
    groups: list[dict]
    """`{"name", "classes", "unit"}` per group."""


def solve(an: Analysis, importance: dict[int, float] | None = None) -> Solution:
    """Groups and ranks of the analysed graph; `importance` (class -> score) orders classes most important first."""
    classes = an.atoms.solve()
    fixed = classes[A.FIXED]
    origins = [(path, layer.origin) for path, layer in an.layers.items() if layer.origin is not None]
    free = sorted({int(c) for _, o in origins for c in classes[o]} - {int(fixed)})
    index = {c: i for i, c in enumerate(free)}
    rows, cols = [], []
    for _, o in origins:
        cs = [index[c] for c in dict.fromkeys(classes[o].tolist()) if c in index]
        rows += cs[:-1]
        cols += cs[1:]
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(free), len(free)))
    _, component = connected_components(graph, directed=False) if free else (0, np.zeros(0, np.int64))
    members: dict[int, list[int]] = {}
    for c in free:
        members.setdefault(int(component[index[c]]), []).append(c)
    key = _rank_keys(classes, [o for _, o in origins] + an.split_parts)
    groups, group_of, rank_of = [], {}, {}
    first: dict[int, int] = {}
    sets = [set(classes[o].tolist()) for _, o in origins]
    for i, s in enumerate(sets):
        for c in s:
            first.setdefault(c, i)
    ordered = sorted(members.values(), key=lambda cs: min(first[c] for c in cs))
    for gi, cs in enumerate(ordered):
        primary = origins[max(range(len(origins)), key=lambda i: (len(sets[i] & set(cs)), -i))][1]
        counts = {}
        for c in classes[primary].tolist():
            counts[c] = counts.get(c, 0) + 1
        position = {c: i for i, c in enumerate(dict.fromkeys(classes[primary].tolist()))}
        units = {counts.get(c, 0) for c in cs}
        unit = units.pop() if len(units) == 1 else 1
        if importance:
            cs = sorted(cs, key=lambda c: (-importance.get(c, 0.0), position.get(c, 1 << 30)))
        else:
            cs = sorted(cs, key=lambda c: (key.get(c, 1.0), position.get(c, 1 << 30)))
        for r, c in enumerate(cs):
            group_of[c], rank_of[c] = gi, r
        name = origins[min(first[c] for c in cs)][0]
        groups.append({"name": name, "classes": len(cs), "unit": max(1, unit)})
    _unique_names(groups)
    _minimums(an, classes, group_of, rank_of, groups)
    return Solution(classes, group_of, rank_of, groups)


def _minimums(an: Analysis, classes: np.ndarray, group_of: dict, rank_of: dict, groups: list[dict]) -> None:
    """Each group's fewest classes such that no tensor holding only its channels is ever empty (a split part, a
    layer's input): a zero-channel tensor is not a narrower model (a conv of it has no output channels)."""
    contexts = list(an.split_parts)
    contexts += [an.sites[layer.sites["in"]] for layer in an.layers.values()
                 if "in" in layer.sites and layer.spec["type"] != "Param"]  # fmt: skip
    for g in groups:
        g["min"] = 1
    for atoms in contexts:
        if len(atoms) == 0 or (atoms < 0).any():
            continue
        cs = [int(c) for c in np.unique(classes[atoms])]
        if any(c not in group_of for c in cs) or len({group_of[c] for c in cs}) != 1:
            continue
        g = groups[group_of[cs[0]]]
        g["min"] = max(g["min"], min(rank_of[c] for c in cs) + 1)


def _rank_keys(classes: np.ndarray, contexts: list[np.ndarray]) -> dict[int, float]:
    """Per class, its largest relative position in any layer output or split part."""
    key: dict[int, float] = {}
    for atoms in contexts:
        if len(atoms) == 0:
            continue
        seen: dict[int, int] = {}
        for i, c in enumerate(classes[atoms[atoms >= 0]].tolist()):
            seen.setdefault(c, i)
        for c, i in seen.items():
            key[c] = max(key.get(c, 0.0), i / len(atoms))
    return key


def _unique_names(groups: list[dict]) -> None:
    seen: dict[str, int] = {}
    for g in groups:
        n = seen.get(g["name"], 0)
        seen[g["name"]] = n + 1
        if n:
            g["name"] = f"{g['name']}#{n}"


# -- layouts -------------------------------------------------------------------------------------------------------
def layout(sol: Solution, atoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Group (-1: always active) and rank of every position of an atom array."""
    g = np.full(len(atoms), -1, np.int64)
    r = np.zeros(len(atoms), np.int64)
    for i, a in enumerate(atoms.tolist()):
        if a >= 0:
            c = int(sol.classes[a])
            if c in sol.group_of:
                g[i], r[i] = sol.group_of[c], sol.rank_of[c]
    return g, r


def param_dim(sol: Solution, labels: torch.Tensor) -> tuple[int | None, np.ndarray | None]:
    """The one dimension along which a channel parameter is sliced and its atoms; `(None, None)` if it is fixed.
    Raises `ValueError` with the free classes if it varies along several dimensions."""
    if not A.has_atoms(labels):
        return None, None
    cls = torch.as_tensor(sol.classes)[labels.clamp(min=0)]
    cls = torch.where(labels >= 0, cls, torch.full_like(cls, -1))
    grouped = torch.tensor([[c in sol.group_of] for c in cls.flatten().tolist()]).view(cls.shape)
    cls = torch.where(grouped, cls, torch.full_like(cls, -1))
    if not bool((cls >= 0).any()):
        return None, None
    dims = A.dims(A.compress(cls))
    if len(dims) != 1:
        raise ValueError(np.unique(cls[cls >= 0].numpy()))
    d = dims[0]
    return d, A.line(labels, d, labels.shape[d])


def encode_layout(g: np.ndarray, r: np.ndarray) -> list[list[int]]:
    """Runs `[group, first rank, length, rank step (0 or 1)]`."""
    runs: list[list[int]] = []
    i = 0
    while i < len(g):
        step = 0
        if i + 1 < len(g) and g[i + 1] == g[i] and r[i + 1] - r[i] in (0, 1) and g[i] >= 0:
            step = int(r[i + 1] - r[i])
        j = i + 1
        while j < len(g) and g[j] == g[i] and (g[i] < 0 or r[j] == r[i] + step * (j - i)):
            j += 1
        runs.append([int(g[i]), int(r[i]) if g[i] >= 0 else 0, j - i, step if g[i] >= 0 else 0])
        i = j
    return runs


def decode_layout(runs: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    gs, rs = [], []
    for group, first, length, step in runs:
        gs.append(np.full(length, group, np.int64))
        rs.append(first + step * np.arange(length, dtype=np.int64))
    if not gs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(gs), np.concatenate(rs)
