"""DMCP's channel model: a Markov chain over the channel bins of every channel group (`dslim.methods.dmcp` trains it).

Each channel group (layers tied by a residual are one group, so they share one chain) of `C` channels at the
supernet's width `max_w` is cut by `[min_w, max_w, step]` into a kept prefix of `keep` channels and `bins` bins of
`size = int(step * C / max_w)` channels (`bins = int((max_w - min_w) / step)`, `keep = C - size * bins`). Each bin
has one architecture parameter `alpha`; `sigmoid(alpha_i)` is the probability to keep bin `i` given bin `i - 1` is
kept, so the marginal keep probability of bin `i` is the cumulative product of the transitions up to `i`, and the
expected channels are `E[c] = keep + size * sum(marginals)`. Expected sampling keeps `round(E[c])` channels per
group, off the bins, as the original retrains it; direct sampling walks the chains.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from dslim.errors import UserError
from dslim.models.base import Supernet
from dslim.subnet import Subnet


@dataclass(frozen=True)
class Chain:
    """The Markov chain of one channel group: `keep` channels always, then `bins` bins of `size` channels. `step`
    and `least` are the group's own rules (a converted grouped conv runs whole groups of `step` channels; built-in
    groups: any count), which counts off the bins respect."""

    group: str
    keep: int
    size: int
    bins: int
    step: int = 1
    least: int = 1

    def channels(self, kept_bins: int) -> int:
        return self.keep + self.size * kept_bins

    @property
    def widest(self) -> int:
        return self.channels(self.bins)

    def nearest(self, channels: float) -> int:
        """The count the group runs nearest to `channels` (a half rounds down: the original's `round(E - 1e-4)`)."""
        return min(self.widest, max(self.least, self.step * round((channels - 1e-4) / self.step)))


def make_chains(net: Supernet, min_width: float, max_width: float, step: float) -> list[Chain]:
    """One chain per channel group of `net` (built at `max_width`); a `UserError` if the widths cannot cut it."""
    if not 0 < min_width < max_width or step > max_width - min_width + 1e-9:
        raise UserError(f"DMCP widths [{min_width}, {max_width}, step {step}]: need 0 < --stages.dmcp.min-width < "
                        f"--model.max-width and --stages.dmcp.width-step at most their difference")  # fmt: skip
    bins = int((max_width - min_width) / step + 1e-4)
    chains = []
    for name, g in net.groups.items():
        if g.choices is not None:
            raise UserError(f"{net.arch}'s group {name!r} has fixed choices; DMCP needs width-multiplier groups")
        size = int(step * g.max / max_width) // g.step * g.step  # a group moving in steps keeps whole steps
        n = bins if size > 0 else 0  # a group too narrow for one bin keeps its width
        keep = g.max - size * n
        if keep < g.min:
            raise UserError(
                f"DMCP widths: group {name!r} ({g.max} channels) would keep {keep}; raise --stages.dmcp.min-width"
            )
        chains.append(Chain(name, keep, size, n, g.step, g.min))
    return chains


def marginals(alpha: torch.Tensor) -> torch.Tensor:
    """Keep probability of each bin: the cumulative product of the transitions `sigmoid(alpha)`."""
    return torch.cumprod(torch.sigmoid(alpha), dim=-1)


class MarkovChannels(nn.Module):
    """The architecture parameters: one alpha per bin of every chain, in one flat vector (group names hold dots)."""

    def __init__(self, chains: list[Chain]) -> None:
        super().__init__()
        self.chains = chains
        self.alpha = nn.Parameter(torch.zeros(sum(c.bins for c in chains)))
        self.offsets = np.cumsum([0] + [c.bins for c in chains]).tolist()

    def alphas(self) -> dict[str, torch.Tensor]:
        return {c.group: self.alpha[self.offsets[i] : self.offsets[i + 1]] for i, c in enumerate(self.chains)}

    def marginals(self) -> dict[str, torch.Tensor]:
        return {g: marginals(a) for g, a in self.alphas().items()}

    def expected_channels(self) -> dict[str, torch.Tensor]:
        """`E[c]` per group, in float64 (MACs of a large network are exact only there)."""
        m = self.marginals()
        return {c.group: c.keep + c.size * m[c.group].double().sum() for c in self.chains}

    def masks(self) -> dict[str, torch.Tensor]:
        """Soft mask per group at its widest: ones on the kept prefix, each bin's marginal on its channels."""
        m = self.marginals()
        return {c.group: torch.cat([m[c.group].new_ones(c.keep), m[c.group].repeat_interleave(c.size)])
                for c in self.chains}  # fmt: skip

    def expected_subnet(self) -> Subnet:
        """Expected sampling: every group at `round(E[c])` channels, off the bins (`Chain.nearest`)."""
        with torch.no_grad():
            e = {g: float(v) for g, v in self.expected_channels().items()}
        return Subnet.of({c.group: c.nearest(e[c.group]) for c in self.chains})

    def sample_bins(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        """Kept bins of `n` walks of every chain: bin `i` is kept while `U < sigmoid(alpha_i)`."""
        p = {g: torch.sigmoid(a.detach()).double().cpu().numpy() for g, a in self.alphas().items()}
        out = {}
        for c in self.chains:
            keep = rng.random((n, c.bins)) < p[c.group]
            out[c.group] = np.cumprod(keep, axis=1).sum(axis=1) if c.bins else np.zeros(n, dtype=np.int64)
        return out

    def sample(self, rng: np.random.Generator) -> Subnet:
        """One direct sample of the chains."""
        bins = self.sample_bins(rng, 1)
        return Subnet.of({c.group: c.channels(int(bins[c.group][0])) for c in self.chains})

    def to_json(self) -> dict:
        """The chains and alphas as JSON (stored in the supernet artifact's metadata; float32 values round-trip)."""
        alphas = self.alphas()
        return {c.group: {"keep": c.keep, "size": c.size, "alpha": [float(a) for a in alphas[c.group].detach().cpu()]}
                for c in self.chains}  # fmt: skip

    @classmethod
    def from_json(cls, obj: object, net: Supernet, where: str) -> MarkovChannels:
        """Chains and alphas written by `to_json`, checked against `net`'s groups."""
        if not isinstance(obj, dict) or list(obj) != list(net.groups):
            raise UserError(f"{where}: its DMCP chains do not name {net.arch}'s channel groups")
        chains, values = [], []
        for g, entry in obj.items():
            try:
                keep, size, alpha = int(entry["keep"]), int(entry["size"]), [float(a) for a in entry["alpha"]]
            except (TypeError, KeyError, ValueError):
                raise UserError(f"{where}: DMCP chain {g!r} is not {{keep, size, alpha: [...]}}") from None
            if keep < net.groups[g].min or keep + size * len(alpha) != net.groups[g].max or size < 0:
                raise UserError(f"{where}: DMCP chain {g!r} does not cover the group's {net.groups[g].max} channels")
            chains.append(Chain(g, keep, size, len(alpha), net.groups[g].step, net.groups[g].min))
            values += alpha
        out = cls(chains)
        with torch.no_grad():
            out.alpha.copy_(torch.tensor(values, dtype=torch.float32))
        return out


def narrowest(chains: list[Chain]) -> Subnet:
    """Every chain at its kept prefix: the least the chains can sample."""
    return Subnet.of({c.group: c.keep for c in chains})
