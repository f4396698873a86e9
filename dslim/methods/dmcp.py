"""DMCP: Differentiable Markov Channel Pruning (Guo et al., CVPR 2020).

The channel model. Each channel group (layers tied by a residual are one group, so they share one chain) of `C`
channels at the supernet's width `max_w` is cut by `[min_w, max_w, step]` into a kept prefix of `keep` channels and
`bins` bins of `size = int(step * C / max_w)` channels (`bins = int((max_w - min_w) / step)`, `keep = C - size *
bins`). Each bin has one architecture parameter `alpha`; `sigmoid(alpha_i)` is the probability to keep bin `i` given
bin `i - 1` is kept (a Markov chain), so the marginal keep probability of bin `i` is the cumulative product of the
transitions up to `i`, and the expected channels are `E[c] = keep + size * sum(marginals)`.

The architecture forward runs the largest subnet with every bin's channels scaled by their marginal (a soft mask),
applied after each BatchNorm of the group (`SlimBatchNorm2d.mask`), where normalization cannot undo it. The expected
MACs are dslim's one complexity polynomial (`MacsModel`) at the expected channels, differentiable in the alphas, and
the `log_l1` FLOPs loss pulls them into `[0.95 T, T]` for a target `T`.

What the `dmcp` stage hands to the `sample` stage is a `DmcpRecord` (target, expected MACs, the chains and their
alphas), stored as JSON in the metadata of the stage's artifact.

Training (`Dmcp`): a warm-up of the weights alone (the first `warmup` share of the stage), then each step one
weight update and one architecture update, each with its own optimizer and schedule. The weight update trains the
largest, the smallest and `num_random` random subnets (per-group uniform bins in the warm-up; then "scheduled
random": per-group uniform with probability `p`, else a sample of the Markov chains, `p` decaying from 1 by
`random_decay` every `decay_every` steps), the largest on the labels and the others by in-place distillation from
its detached softmax. The architecture update is the soft-masked largest on cross-entropy plus `flops_weight` times
the FLOPs loss.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Annotated

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dslim.config import (
    Fraction,
    NonNegative,
    NonNegativeFloat,
    OptimConfig,
    Positive,
    ScheduleConfig,
    TrainConfig,
    in_range,
)
from dslim.errors import UserError
from dslim.methods.sandwich import sandwich_pass
from dslim.models.base import Supernet
from dslim.models.complexity import MacsModel
from dslim.nn import SlimModule
from dslim.subnet import Subnet
from dslim.training import Batch, Method, ParamSet, StepContext, Update, Where

Width = Annotated[float, in_range(0.0, 4.0, open_low=True)]


@dataclass(frozen=True)
class DmcpConfig(TrainConfig):
    """DMCP: weights, then weights and Markov channel alphas alternately (see `dslim.methods.dmcp`)."""

    target_macs: NonNegativeFloat = 0.0
    """MACs per image the architecture is pulled to (e.g. 211e6); must lie between the smallest and the largest
    subnet of the chains."""
    target_ms: NonNegativeFloat = 0.0
    """Latency (ms per batch of `latency_batch` on the device `latency_table` was measured on) the architecture is
    pulled to, with or instead of `target_macs`: the expected latency, the table's per-layer fits at the expected
    channels, in a loss like the FLOPs loss (0: none)."""
    latency_table: str | None = None
    """The model's `latency.json` with a per-layer table (`python -m dslim.latency --recipe R --layers 8`); needed
    by `target_ms`."""
    latency_batch: Positive = 1
    """Batch size `target_ms` is for (one the table measured)."""
    min_width: Width = 0.1
    """Narrowest width of every chain (its kept prefix), as a multiplier like `--model.max-width`."""
    width_step: Width = 0.1
    """Width of one bin of a chain, as a multiplier (`[min_width, model.max_width, width_step]`)."""
    warmup: Fraction = 0.5
    """Share of the stage that trains the weights alone, before the alphas start learning."""
    flops_weight: NonNegativeFloat = 0.1
    """Weight of the FLOPs loss in the architecture update."""
    label_smoothing: Fraction = 0.0
    """Label smoothing of the largest subnet's cross-entropy (MobileNet v2: 0.1)."""
    num_random: NonNegative = 2
    """Random subnets per weight update, beside the largest and the smallest."""
    random_decay: Fraction = 0.9999
    """Scheduled random: the probability of a per-group random subnet (else a Markov sample) is multiplied by this
    every `decay_every` steps of the second phase."""
    decay_every: Positive = 10
    """Steps between two decays of the scheduled-random probability."""
    arch_optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=0.5, lr_batch=512, momentum=0.9, nesterov=True, weight_decay=0.0)
    )
    """Optimizer of the alphas (the original: SGD Nesterov 0.9, lr 0.5, no weight decay)."""
    arch_schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(kind="cosine", min_lr=0.1))
    """Schedule of the alphas, over the second phase (the original: cosine from 0.5 to 0.1)."""


# -- the channel model -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Chain:
    """The Markov chain of one channel group: `keep` channels always, then `bins` bins of `size` channels."""

    group: str
    keep: int
    size: int
    bins: int

    def channels(self, kept_bins: int) -> int:
        return self.keep + self.size * kept_bins

    @property
    def choices(self) -> tuple[int, ...]:
        return tuple(self.channels(k) for k in range(self.bins + 1))


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
        chains.append(Chain(name, keep, size, n))
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
        """Expected sampling: `round(E[c])`, i.e. the kept bins rounded to a whole number of bins."""
        m = {g: float(v.detach().double().sum()) for g, v in self.marginals().items()}
        return Subnet.of({c.group: c.channels(min(c.bins, int(math.floor(m[c.group] + 0.5)))) for c in self.chains})

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
            chains.append(Chain(g, keep, size, len(alpha)))
            values += alpha
        out = cls(chains)
        with torch.no_grad():
            out.alpha.copy_(torch.tensor(values, dtype=torch.float32))
        return out


@dataclass(frozen=True)
class DmcpRecord:
    """What DMCP's training leaves for sampling: the artifact's `"dmcp"` metadata (an imported checkpoint's too)."""

    target_macs: float
    """The MACs target it trained towards (0: none, or unknown: an imported checkpoint)."""
    expected_macs: float
    """The chains' expected MACs at the end of training."""
    chains: MarkovChannels
    target_ms: float = 0.0
    """The latency target it trained towards (0: none)."""
    expected_ms: float = 0.0
    """The chains' expected latency at the end of training (by the table it trained with; 0: none)."""

    def to_json(self) -> dict:
        return {"target_macs": self.target_macs, "expected_macs": self.expected_macs, "chains": self.chains.to_json(),
                "target_ms": self.target_ms, "expected_ms": self.expected_ms}  # fmt: skip

    @classmethod
    def from_json(cls, obj: object, net: Supernet, where: str) -> DmcpRecord:
        """A record written by `to_json`, its chains checked against `net`'s groups."""
        if not isinstance(obj, dict):
            raise UserError(f"{where} holds no DMCP record (target, expected MACs, chains)")
        chains = MarkovChannels.from_json(obj.get("chains"), net, where)
        try:
            return cls(float(obj.get("target_macs", 0)), float(obj.get("expected_macs", 0)), chains,
                       float(obj.get("target_ms", 0)), float(obj.get("expected_ms", 0)))  # fmt: skip
        except (TypeError, ValueError):
            raise UserError(f"{where}: its DMCP target or expected MACs is not a number") from None


def smallest(chains: list[Chain]) -> Subnet:
    return Subnet.of({c.group: c.keep for c in chains})


def per_group_random(chains: list[Chain], rng: np.random.Generator) -> Subnet:
    """Every group at a uniformly drawn number of kept bins."""
    return Subnet.of({c.group: c.channels(int(rng.integers(c.bins + 1))) for c in chains})


@contextlib.contextmanager
def soft_masks(net: Supernet, masks: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Every BatchNorm of a masked group multiplies its output by the group's mask inside the block (a converted
    model's group without a normalization layer: its layers' outputs)."""
    layers = [m for m in net.modules() if isinstance(m, SlimModule)]
    for m in layers:
        m.mask_channels(masks)
    try:
        yield
    finally:
        for m in layers:
            m.mask_channels(None)


def latency_loss(expected_ms: torch.Tensor, target_ms: float, macs_per_ms: float) -> torch.Tensor:
    """The FLOPs loss of a latency: both sides converted to MACs at `macs_per_ms` (the largest subnet's MACs over
    its latency), so that the loss's constants (its band, its 200M step) keep their meaning."""
    return flops_loss(expected_ms * macs_per_ms, target_ms * macs_per_ms)


def flops_loss(expected_macs: torch.Tensor, target_macs: float) -> torch.Tensor:
    """The original's `log_l1` loss, in millions of MACs: zero inside `[0.95 T, T)`, else the log of the distance
    (to `T` below the band, to `0.95 T` above it), the distance scaled by 0.1 when it exceeds 200M."""
    e, t = expected_macs / 1e6, target_macs / 1e6
    distance = float(abs(e.detach() - t))
    ratio = 0.1 if distance > 200 else 1.0
    if e < 0.95 * t:
        return torch.log(ratio * (t - e))
    if e < t:
        return e * 0.0
    return torch.log(ratio * (e - 0.95 * t))


# -- training ----------------------------------------------------------------------------------------------------
class Dmcp(Method):
    """Alternating weight and architecture updates of `net` and `chains`.

    The method attaches the chains to the network (`net.dmcp`), so that the alphas are trained, reduced across
    processes and checkpointed with it, until `finish` takes them off again and returns them as a `DmcpRecord`.
    `latency` (channels per group -> ms, differentiable: a latency table's `ExpectedLatency`) adds the latency loss
    towards `cfg.target_ms`.
    """

    def __init__(self, cfg: DmcpConfig, net: Supernet, macs: MacsModel, chains: MarkovChannels,
                 latency: Callable[[Mapping[str, torch.Tensor]], torch.Tensor] | None = None) -> None:  # fmt: skip
        self.cfg, self.macs, self.chains, self.latency = cfg, macs, chains, latency
        net.dmcp = chains
        self.start_epoch = cfg.warmup * cfg.epochs
        self.largest = net.largest()
        if latency is not None:
            top = dict(self.largest.items())
            self.macs_per_ms = float(macs.macs(top)) / float(latency(top))

    def expected_macs(self) -> float:
        """The chains' expected MACs now."""
        with torch.no_grad():
            return float(self.macs.macs(self.chains.expected_channels()))

    def expected_ms(self) -> float:
        """The chains' expected latency now (ms; 0 without a latency table)."""
        with torch.no_grad():
            return 0.0 if self.latency is None else float(self.latency(self.chains.expected_channels()))

    def finish(self, net: Supernet) -> DmcpRecord:
        """The chains taken off `net` (its artifact holds the architecture's own tensors only) as the record the
        sample stage reads."""
        record = DmcpRecord(self.cfg.target_macs, self.expected_macs(), self.chains, self.cfg.target_ms,
                            self.expected_ms())  # fmt: skip
        del net.dmcp
        return record

    def param_sets(self, net: Supernet) -> dict[str, ParamSet]:
        arch = {id(p) for p in self.chains.parameters()}
        weights = [p for p in net.parameters() if id(p) not in arch]
        return {
            "weights": ParamSet(weights, self.cfg.optim, self.cfg.schedule),
            "arch": ParamSet(
                list(self.chains.parameters()),
                self.cfg.arch_optim,
                self.cfg.arch_schedule,
                start_epoch=self.start_epoch,
            ),  # fmt: skip
        }

    def second_phase(self, where: Where) -> int | None:
        """Steps since the alphas started learning (None in the warm-up)."""
        start = round(self.start_epoch * where.steps_per_epoch)
        return where.step - start if where.step >= start else None

    def updates(self, where: Where, sets) -> list[Update]:  # type: ignore[no-untyped-def]
        weights = Update(("weights",), self.weight_pass)
        return [weights] if self.second_phase(where) is None else [weights, Update(("arch",), self.arch_pass)]

    def step_subnets(self, where: Where, rng: np.random.Generator) -> list[tuple[str, Subnet]]:
        """Largest, smallest, then the random ones (scheduled random in the second phase)."""
        chains = self.chains.chains
        since = self.second_phase(where)
        p = 1.0 if since is None else self.cfg.random_decay ** (since // self.cfg.decay_every)
        randoms = []
        for _ in range(self.cfg.num_random):
            markov = rng.random() >= p
            subnet = self.chains.sample(rng) if markov else per_group_random(chains, rng)
            randoms.append(("markov" if markov else "random", subnet))
        return [("largest", self.largest), ("smallest", smallest(chains)), *randoms]

    def weight_pass(self, model: nn.Module, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        ctx.supernet.train()
        subnets = self.step_subnets(ctx.where, ctx.rng())
        return sandwich_pass(model, batch, ctx, subnets, self.cfg.label_smoothing, "inplace")

    def arch_pass(self, model: nn.Module, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        images, labels = batch
        net = ctx.supernet
        net.train()
        net.set_subnet(net.largest())
        cfg, logs = self.cfg, {}
        with ctx.backward_pass(last=True), soft_masks(net, self.chains.masks()):
            ce = F.cross_entropy(model(images).float(), labels)
            channels = self.chains.expected_channels()
            expected = self.macs.macs(channels)
            loss = ce
            if cfg.target_macs > 0:
                floss = flops_loss(expected, cfg.target_macs)
                loss = loss + cfg.flops_weight * floss.float()
                logs["loss/flops"] = floss.detach().float()
            if self.latency is not None:
                ms = self.latency(channels)
                lloss = latency_loss(ms, cfg.target_ms, self.macs_per_ms)
                loss = loss + cfg.flops_weight * lloss.float()
                logs.update({"loss/latency": lloss.detach().float(), "expected_ms": ms.detach().float()})
            ctx.backward(loss)
        return {"loss/arch": ce.detach(), **logs, "expected_mmacs": expected.detach().float() / 1e6}
