"""Subnet samplers shared by every method. Draws come only from the generator passed in, so processes that share
a seed (`StepContext.rng`) draw the same subnets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from dslim.models.base import Supernet
from dslim.subnet import Subnet


def uniform_width(net: Supernet, rng: np.random.Generator) -> Subnet:
    """A width multiplier drawn uniformly in the network's universally slimmable range (US-Net)."""
    low, high = net.width_range  # type: ignore[attr-defined]
    return net.uniform(float(rng.uniform(low, high)))  # type: ignore[attr-defined]


def named(net: Supernet, names: Sequence[str], rng: np.random.Generator) -> Subnet:
    """One of `names`, uniformly (DS-Net: `uniform-1` .. `uniform-12`)."""
    return net.resolve(names[int(rng.integers(len(names)))])


def per_group(net: Supernet, rng: np.random.Generator, choices: Mapping[str, Sequence[int]] | None = None) -> Subnet:
    """Every channel group drawn independently and uniformly from its choices (default: `net.group_choices()`)."""
    choices = net.group_choices() if choices is None else choices
    return Subnet.of({g: int(c[int(rng.integers(len(c)))]) for g, c in choices.items()})


def in_bins(net: Supernet, rng: np.random.Generator, bins: int, min_bin: int = 1) -> Subnet:
    """Every group drawn independently from its channel bins (AutoSlim's random subnets)."""
    return per_group(net, rng, net.group_choices(bins, min_bin))


def smallest_of(choices: Mapping[str, Sequence[int]]) -> Subnet:
    """Every group at its fewest channels: the lower end of a per-group space (the sandwich rule's smallest)."""
    return Subnet.of({g: min(c) for g, c in choices.items()})
