"""A subnet is data: how many channels each channel group keeps, and which blocks run.

Every method produces one of these: a width multiplier (S-Net, US-Net), a stage choice (DS-Net), a searched
configuration (AutoSlim), a sample (DMCP), a keep mask (BlockDrop). Layers tied by a residual connection share
one channel group, so a subnet can never break a residual sum.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from dslim.errors import UserError


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that are sliced together.

    `choices` restricts the allowed counts (DS-Net's stage widths); without it any count in `[min, max]` that is a
    multiple of `step` is allowed (a converted grouped convolution moves in whole groups of `step` channels).
    """

    name: str
    max: int
    choices: tuple[int, ...] | None = None
    min: int = 1
    step: int = 1

    def divisible(self, channels: int, divisor: int) -> int:
        """`channels` moved to the nearest count in this group's range that is a multiple of `divisor` and of the
        group's step (ties upwards), the group's full width counting as one so that the largest subnet stays
        reachable; a group with its own choices (or `divisor` 1) keeps `channels` as they are."""
        unit = math.lcm(divisor, self.step)
        if unit == self.step or self.choices is not None:
            return channels
        low = channels // unit * unit
        counts = [c for c in (low, low + unit) if self.min <= c <= self.max] + [self.max]
        return min(counts, key=lambda c: (abs(c - channels), -c))

    def check(self, channels: int) -> None:
        if self.choices is not None and channels not in self.choices:
            raise UserError(f"channel group {self.name!r} cannot have {channels} channels; allowed: {self.choices}")
        if not self.min <= channels <= self.max or channels % self.step:
            steps = f" in steps of {self.step}" if self.step > 1 else ""
            raise UserError(
                f"channel group {self.name!r} cannot have {channels} channels; allowed: {self.min}..{self.max}{steps}"
            )


@dataclass(frozen=True)
class Subnet(Mapping[str, int]):
    """Active channels per group (ordered as the supernet lists its groups) plus an optional block keep-mask.

    Hashable and JSON-serializable. `key` is a short digest of the channels alone: it files per-subnet BatchNorm
    statistics, so the same channels always find the same statistics whatever the subnet is called, and a block
    mask (BlockDrop) does not multiply them.
    """

    channels: tuple[tuple[str, int], ...]
    blocks: tuple[bool, ...] | None = None

    @classmethod
    def of(cls, channels: Mapping[str, int], blocks: tuple[bool, ...] | None = None) -> Subnet:
        return cls(tuple((g, int(c)) for g, c in channels.items()), None if blocks is None else tuple(blocks))

    @functools.cached_property
    def _index(self) -> dict[str, int]:
        return dict(self.channels)

    def __getitem__(self, group: str) -> int:
        return self._index[group]

    def __iter__(self) -> Iterator[str]:
        return (g for g, _ in self.channels)

    def __len__(self) -> int:
        return len(self.channels)

    def __hash__(self) -> int:
        return hash((self.channels, self.blocks))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Subnet) and (self.channels, self.blocks) == (other.channels, other.blocks)

    def with_blocks(self, blocks: tuple[bool, ...] | None) -> Subnet:
        return Subnet(self.channels, None if blocks is None else tuple(bool(b) for b in blocks))

    def to_json(self) -> dict:
        return {"channels": dict(self.channels), "blocks": None if self.blocks is None else list(self.blocks)}

    @classmethod
    def from_json(cls, obj: object, where: str = "subnet") -> Subnet:
        """A subnet from its JSON form; a `UserError` naming `where` if the object is not one."""
        channels = obj.get("channels") if isinstance(obj, dict) else None
        if not isinstance(channels, dict) or not all(
            isinstance(g, str) and isinstance(c, int) and not isinstance(c, bool) for g, c in channels.items()
        ):
            raise UserError(f'{where} is not a subnet: expected {{"channels": {{group: int, ...}}, "blocks": ...}}')
        blocks = obj.get("blocks")
        if blocks is not None and not (isinstance(blocks, list) and all(isinstance(b, bool) for b in blocks)):
            raise UserError(f"{where}: `blocks` must be a list of true/false or null")
        return cls.of(channels, None if blocks is None else tuple(blocks))

    @functools.cached_property
    def key(self) -> str:
        return "s" + hashlib.sha1(json.dumps(dict(self.channels), sort_keys=True).encode()).hexdigest()[:12]


def make_divisible(v: float, divisor: int = 8, min_value: int = 1) -> int:
    """Round a width-multiplied channel count to a multiple of `divisor`, never more than 10% below `v`.

    The rule of the TensorFlow-slim MobileNets, used by the slimmable-networks model zoo.
    """
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v
