"""Channel layouts: which positions of a tensor's channel dimension are active at a subnet.

Layers of a converted model (`dslim.nn.indexed`) do not assume their active channels come first: a layer after a
concatenation reads several runs of channels, a layer after a channel shuffle every other one. Each channel
position belongs to a group (or to none: always active) and has a rank; a group with `n` channels keeps the
positions whose rank is below `n / unit`. `Layouts` holds every layout of a network and, for the current subnet,
each one's active positions as the cheapest index there is: `None` (all), an int `k` (the first `k`, a plain slice
as in the built-in supernets) or an index tensor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

Index = None | int | np.ndarray


@dataclass(frozen=True)
class Count:
    """A tensor's active channels as a function of the groups' channel counts: `const + sum(mult * clamp(n_g /
    unit_g - lo, 0, hi - lo))`, exact for integer counts and differentiable for expected ones (DMCP)."""

    const: int
    terms: tuple[tuple[str, int, int, int, int], ...]
    """`(group, unit, lo, hi, mult)`: `mult` positions for each class of rank in `[lo, hi)`."""

    def __call__(self, channels: Mapping[str, object]) -> object:
        total: object = self.const
        for group, unit, lo, hi, mult in self.terms:
            n = channels[group]
            if isinstance(n, torch.Tensor):
                total = total + mult * torch.clamp(n / unit - lo, 0, hi - lo)
            elif isinstance(n, int):
                total = total + mult * min(max(n // unit - lo, 0), hi - lo)
            else:
                total = total + mult * min(max(n / unit - lo, 0.0), float(hi - lo))
        return total


class Layouts:
    """Every channel layout of a network, with the active positions of the current subnet."""

    def __init__(self, layouts: Sequence[tuple[np.ndarray, np.ndarray]], groups: Sequence[str], units: Sequence[int]):
        self.groups, self.units = list(groups), np.asarray(units, np.int64)
        self.sizes = [len(g) for g, _ in layouts]
        self.offsets = np.cumsum([0, *self.sizes])
        self.g = np.concatenate([g for g, _ in layouts]) if layouts else np.zeros(0, np.int64)
        self.r = np.concatenate([r for _, r in layouts]) if layouts else np.zeros(0, np.int64)
        self.current: list[Index] = [None] * len(self.sizes)
        self._tensors: dict[tuple[int, torch.device], torch.Tensor] = {}
        self._cache: dict[object, list[Index]] = {}

    def __len__(self) -> int:
        return len(self.sizes)

    def _active(self, channels: Mapping[str, int]) -> np.ndarray:
        limits = np.append(np.array([channels[g] for g in self.groups], np.int64) // np.maximum(self.units, 1),
                           np.iinfo(np.int64).max)  # fmt: skip
        return self.r < limits[self.g]

    def active(self, i: int, channels: Mapping[str, int]) -> np.ndarray:
        """Whether each position of layout `i` is active at `channels`."""
        return self._active(channels)[self.offsets[i] : self.offsets[i + 1]]

    def indices(self, channels: Mapping[str, int]) -> list[Index]:
        active = self._active(channels)
        out: list[Index] = []
        for i, n in enumerate(self.sizes):
            a = active[self.offsets[i] : self.offsets[i + 1]]
            k = int(a.sum())
            out.append(None if k == n else k if a[:k].all() else np.flatnonzero(a))
        return out

    def select(self, subnet: Mapping[str, int]) -> None:
        """Make `subnet`'s active positions current (a small cache: sandwich steps revisit the same subnets)."""
        found = self._cache.get(subnet)
        if found is None:
            if len(self._cache) > 64:
                self._cache.clear()
            found = self._cache[subnet] = self.indices(subnet)
        self.current = found
        self._tensors = {}

    def at(self, i: int | None, device: torch.device) -> None | int | torch.Tensor:
        """Layout `i`'s current index for tensors on `device` (`None` for a layout-free, fixed dimension)."""
        if i is None:
            return None
        index = self.current[i]
        if index is None or isinstance(index, int):
            return index
        key = (i, device)
        t = self._tensors.get(key)
        if t is None:
            t = self._tensors[key] = torch.from_numpy(index).to(device)
        return t

    def count(self, i: int | None, channels: Mapping[str, int], full: int) -> int:
        return full if i is None else int(self.active(i, channels).sum())

    def count_fn(self, i: int | None, full: int) -> Count:
        """Layout `i`'s active positions as a function of group counts (`full` if it has no layout)."""
        if i is None:
            return Count(full, ())
        g, r = self.g[self.offsets[i] : self.offsets[i + 1]], self.r[self.offsets[i] : self.offsets[i + 1]]
        terms = []
        for k in np.unique(g[g >= 0]).tolist():
            mult = np.bincount(r[g == k])
            lo = 0
            while lo < len(mult):
                hi = lo
                while hi < len(mult) and mult[hi] == mult[lo]:
                    hi += 1
                if mult[lo]:
                    terms.append((self.groups[k], int(self.units[k]), lo, hi, int(mult[lo])))
                lo = hi
        return Count(int((g < 0).sum()), tuple(terms))

    def masks(self, i: int, masks: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """Per position of layout `i`, its group's soft mask value at the position's rank (DMCP); None if no
        position belongs to a masked group."""
        g, r = self.g[self.offsets[i] : self.offsets[i + 1]], self.r[self.offsets[i] : self.offsets[i + 1]]
        if not any(self.groups[k] in masks for k in np.unique(g[g >= 0]).tolist()):
            return None
        ref = next(iter(masks.values()))
        out = ref.new_ones(len(g))
        for k in np.unique(g[g >= 0]).tolist():
            name = self.groups[k]
            if name in masks:
                where = torch.from_numpy(np.flatnonzero(g == k)).to(ref.device)
                ranks = torch.from_numpy(r[g == k] * int(self.units[k])).to(ref.device)
                out = out.index_put((where,), masks[name][ranks])
        return out


def take(t: torch.Tensor | None, dim: int, index: None | int | torch.Tensor) -> torch.Tensor | None:
    """`t` sliced to `index` along `dim` (a view for `None` and prefixes)."""
    if t is None or index is None:
        return t
    if isinstance(index, int):
        return t.narrow(dim, 0, index)
    return t.index_select(dim, index)


def as_index(index: Index, device: torch.device | None = None) -> None | int | torch.Tensor:
    if index is None or isinstance(index, int):
        return index
    return torch.from_numpy(np.asarray(index, np.int64)).to(device or "cpu")
