"""Channel identity as data: every channel of every traced tensor is an atom, and constraints tie atoms together.

A tensor's *labels* are an integer tensor of the same rank as the tensor, of size 1 along every dimension where the
labels do not change (so an `N x C x H x W` activation has labels of shape `1 x C x 1 x 1`); each entry names the
atom at that position, -1 none (a dimension that never changes with the width, such as the image's 3 channels).
Reshaping operations are analysed by running them on the labels themselves.

A *tie* says that two atoms are always active together (a residual sum adds channel i of one operand to channel i
of the other; a depthwise conv maps its input channel i to its output channel i). A *pin* says an atom stays
active in every subnet (the model's output, the operands of an operation without a channel rule), with the reason.
`solve` turns ties and pins into classes: atoms always active together.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

FIXED = 0
"""The atom every pinned atom is tied to; its class is always active."""

LABEL_LIMIT = 1 << 22
"""Tensors with more elements than this get no labels of their own (a large buffer is not a channel vector)."""


@dataclass
class Atoms:
    """The atoms made so far, with their ties and pins."""

    count: int = 1
    ties: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    pins: list[tuple[np.ndarray, str]] = field(default_factory=list)

    def new(self, n: int) -> np.ndarray:
        out = np.arange(self.count, self.count + n, dtype=np.int64)
        self.count += n
        return out

    def tie(self, a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> None:
        """Tie `a[i]` to `b[i]` wherever both name an atom."""
        a, b = _np(a).ravel(), _np(b).ravel()
        keep = (a >= 0) & (b >= 0) & (a != b)
        if keep.any():
            self.ties.append((a[keep], b[keep]))

    def tie_all(self, a: np.ndarray | torch.Tensor) -> None:
        """Tie every atom of `a` to one another."""
        a = _np(a).ravel()
        a = a[a >= 0]
        if a.size > 1:
            self.ties.append((a[:-1], a[1:]))

    def pin(self, a: np.ndarray | torch.Tensor, reason: str) -> None:
        a = _np(a).ravel()
        a = np.unique(a[a > FIXED])
        if a.size:
            self.pins.append((a, reason))

    def solve(self, pins: bool = True) -> np.ndarray:
        """The class of every atom (the class of `FIXED` is the always-active one); `pins=False`: of the ties
        alone (which pin reaches which layer, for `describe()`)."""
        rows = [np.zeros(0, np.int64)]
        cols = [np.zeros(0, np.int64)]
        for a, b in self.ties:
            rows.append(a)
            cols.append(b)
        for a, _ in self.pins if pins else ():
            rows.append(a)
            cols.append(np.full_like(a, FIXED))
        r, c = np.concatenate(rows), np.concatenate(cols)
        graph = coo_matrix((np.ones(r.size, np.int8), (r, c)), shape=(self.count, self.count))
        _, labels = connected_components(graph, directed=False)
        return labels.astype(np.int64)

    def reasons(self, classes: np.ndarray) -> dict[int, list[str]]:
        """For every class holding a pinned atom, why it was pinned."""
        out: dict[int, list[str]] = {}
        for a, reason in self.pins:
            for c in np.unique(classes[a]).tolist():
                if reason not in out.setdefault(c, []):
                    out[c].append(reason)
        return out


def _np(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy().astype(np.int64) if isinstance(x, torch.Tensor) else np.asarray(x, np.int64)


# -- labels ------------------------------------------------------------------------------------------------------
def none(ndim: int) -> torch.Tensor:
    """Labels of a tensor without atoms."""
    return torch.full((1,) * ndim, -1, dtype=torch.int64)


def along(atoms: np.ndarray | torch.Tensor, ndim: int, dim: int) -> torch.Tensor:
    """Labels of a tensor whose atoms run along `dim`."""
    shape = [1] * ndim
    shape[dim] = len(atoms)
    return torch.as_tensor(_np(atoms)).view(shape)


def compress(labels: torch.Tensor) -> torch.Tensor:
    """`labels` reduced to size 1 along every dimension where they do not change."""
    for d in range(labels.dim()):
        if labels.shape[d] > 1 and bool((labels == labels.narrow(d, 0, 1)).all()):
            labels = labels.narrow(d, 0, 1)
    return labels.contiguous()


def expand(labels: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """`labels` at the full `shape` of their tensor (a real, contiguous tensor that reshaping may run on)."""
    return labels.expand(tuple(shape)).contiguous()


def dims(labels: torch.Tensor) -> list[int]:
    """The dimensions along which the labels change: a tensor's channel dimensions."""
    return [d for d in range(labels.dim()) if labels.shape[d] > 1]


def has_atoms(labels: torch.Tensor) -> bool:
    return bool((labels >= 0).any())


def line(labels: torch.Tensor, dim: int, size: int) -> np.ndarray:
    """The atoms along `dim` (at index 0 of every other dimension), `size` of them."""
    index = [0] * labels.dim()
    index[dim] = slice(None)
    out = labels.expand(*[size if d == dim else labels.shape[d] for d in range(labels.dim())])[tuple(index)]
    return _np(out)
