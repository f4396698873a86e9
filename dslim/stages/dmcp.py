"""DMCP's stages: `dmcp` (weights, then weights and Markov channel alphas alternately) and `sample` (subnets drawn
from the learnt chains).

- `dmcp` trains the supernet with `dslim.methods.dmcp.Dmcp` towards `--stages.dmcp.target-macs`, validating the
  largest subnet after BatchNorm recalibration each epoch and logging the expected MACs. Its artifact is a plain
  supernet (every later stage and command reads it as any other) whose metadata carries the chains and alphas
  (`"dmcp"`: target, expected MACs, and per group `keep`, `size`, `alpha`); the alphas live outside the weights so
  that the artifact loads into the architecture as it is.
- `sample` reads those alphas and writes `sample/subnets.json`: `dmcp-expected` (expected sampling: each group at
  `round(E[c])`, on its bins) and `dmcp-direct-0` ... (direct sampling: walks of the chains, kept when their MACs
  are within `tolerance` of the target), with `sample/marginals.png`, the keep probability of every bin. The
  subnet to retrain from scratch is then chosen by name: `--stages.retrain.subnets dmcp-expected`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch

from dslim.complexity import MacsModel
from dslim.config import Config, NonNegativeFloat, Positive, in_range
from dslim.errors import UserError
from dslim.io import atomic_write
from dslim.methods.dmcp import Dmcp, DmcpConfig, MarkovChannels, make_chains, smallest
from dslim.models.base import Supernet
from dslim.stages.context import StageContext
from dslim.stages.registry import register_stage
from dslim.subnet import Subnet


def _chains(config: Config, net: Supernet) -> MarkovChannels:
    cfg: DmcpConfig = config.stages.dmcp  # type: ignore[attr-defined]
    max_width = getattr(net, "max_width", config.model.max_width)
    return MarkovChannels(make_chains(net, cfg.min_width, max_width, cfg.width_step))


def reachable(net: Supernet, chains: MarkovChannels, input_size: int) -> tuple[int, int]:
    """MACs of the chains' smallest and largest subnets."""
    macs = MacsModel(net, input_size)
    return macs.exact(smallest(chains.chains)), macs.exact(net.largest())


def check_target(target: float, net: Supernet, chains: MarkovChannels, input_size: int, option: str) -> None:
    low, high = reachable(net, chains, input_size)
    if not low <= target <= high:
        raise UserError(f"{option} {target:g} is outside what {net.arch} can reach with its DMCP chains: "
                        f"{low:,} .. {high:,} MACs at {input_size}px")  # fmt: skip


def check(config: Config, net: Supernet, cfg: DmcpConfig) -> None:
    if net.bn_mode != "calibrated":
        raise UserError("DMCP runs subnets it never trained and soft-masked widths: use --model.bn calibrated")
    if cfg.target_macs <= 0:
        raise UserError("give DMCP's target: --stages.dmcp.target-macs 211e6 (MACs per image)")
    check_target(cfg.target_macs, net, _chains(config, net), config.model.input_size, "--stages.dmcp.target-macs")


@register_stage("dmcp", DmcpConfig, from_scratch=True, check=check)
def dmcp(ctx: StageContext) -> None:
    """DMCP: weights, then weights and Markov channel alphas alternately, towards a MACs target."""
    cfg: DmcpConfig = ctx.settings  # type: ignore[assignment]
    net = ctx.supernet()
    check(ctx.config, net, cfg)  # the supernet read may differ from the model settings (`--from`)
    size = ctx.config.model.input_size
    macs = MacsModel(net, size)
    net.dmcp = _chains(ctx.config, net).to(net.device)
    trainer = ctx.trainer(net, Dmcp(cfg, net, macs), cfg)
    validate = ctx.epoch_evaluator(trainer, {"largest": net.largest()})

    def expected_macs() -> float:
        with torch.no_grad():
            return float(macs.macs(net.dmcp.expected_channels()))

    def on_epoch_end(epoch: int) -> dict[str, float]:
        out = {**validate(epoch), "expected_macs": round(expected_macs())}
        ctx.accelerator.print(f"dmcp epoch {epoch + 1}: expected {out['expected_macs'] / 1e6:,.3f}M MACs "
                              f"(target {cfg.target_macs / 1e6:,.3f}M)")  # fmt: skip
        return out

    bins = sum(c.bins for c in net.dmcp.chains)
    ctx.accelerator.print(f"dmcp: {cfg.epochs} epochs (alphas from epoch {cfg.warmup * cfg.epochs:g}), {bins} bins in "
                          f"{len(net.dmcp.chains)} chains, target {cfg.target_macs:,.0f} MACs, global batch "
                          f"{trainer.global_batch}")  # fmt: skip
    trainer.fit(lambda epoch: ctx.loader("train", epoch), on_epoch_end)
    record = {"target_macs": cfg.target_macs, "expected_macs": expected_macs(), "chains": net.dmcp.to_json()}
    del net.dmcp  # the artifact holds the architecture's own tensors only; the alphas go into its metadata
    ctx.save_supernet(net, dmcp=record)


# -- sampling ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SampleConfig:
    """Subnets drawn from DMCP's learnt chains (see `dslim.stages.dmcp`)."""

    target_macs: NonNegativeFloat = 0.0
    """MACs the direct samples must be near (0: the target the dmcp stage trained for)."""
    count: Positive = 5
    """Direct samples to keep (`dmcp-direct-0` ...)."""
    tolerance: Annotated[float, in_range(0.0, 1.0, open_low=True)] = 0.01
    """A direct sample is kept when its MACs are within this share of the target."""
    max_draws: Positive = 200_000
    """Walks of the chains before giving up on finding `count` samples within the tolerance."""
    prefix: str = "dmcp"
    """Names of the written subnets: `<prefix>-expected`, `<prefix>-direct-<i>`."""


def check_sample(config: Config, net: Supernet, cfg: SampleConfig) -> None:
    if cfg.target_macs > 0 and net.bn_mode == "calibrated":
        check_target(cfg.target_macs, net, _chains(config, net), config.model.input_size, "--stages.sample.target-macs")


def direct_samples(chains: MarkovChannels, macs: MacsModel, target: float, cfg: SampleConfig,
                   rng: np.random.Generator) -> tuple[list, int]:  # fmt: skip
    """The first `cfg.count` walks of the chains within the tolerance of `target`, and the number of walks made."""
    found: list = []
    drawn = 0
    while len(found) < cfg.count and drawn < cfg.max_draws:
        n = min(4096, cfg.max_draws - drawn)
        bins = chains.sample_bins(rng, n)
        channels = {c.group: torch.from_numpy(c.keep + c.size * bins[c.group]).double() for c in chains.chains}
        cost = macs.macs(channels).expand(n)
        for i in np.flatnonzero((cost - target).abs().numpy() <= cfg.tolerance * target):
            if len(found) < cfg.count:
                found.append(({g: int(ch[i]) for g, ch in channels.items()}, drawn + int(i) + 1))
        drawn += n
    return found, drawn


def plot_marginals(path: Path, chains: MarkovChannels) -> None:
    """Each group's keep probability per bin against its channel count, its expected channels marked."""
    from matplotlib.figure import Figure

    marginals = {g: m.detach().double().cpu().numpy() for g, m in chains.marginals().items()}
    shown = [c for c in chains.chains if c.bins]
    cols = min(6, max(1, len(shown)))
    rows = max(1, -(-len(shown) // cols))
    fig = Figure(figsize=(2.2 * cols, 1.8 * rows), dpi=100)
    for k, c in enumerate(shown):
        ax = fig.add_subplot(rows, cols, k + 1)
        x = [c.channels(i + 1) for i in range(c.bins)]
        ax.plot(x, marginals[c.group], "o-", ms=2.5, lw=1)
        ax.axvline(c.keep + c.size * marginals[c.group].sum(), color="C3", lw=0.8, ls="--")
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlim(0, c.channels(c.bins) * 1.02)
        ax.set_title(c.group, fontsize=7)
        ax.tick_params(labelsize=6)
    fig.suptitle("DMCP: keep probability of each bin (dashed: expected channels)", fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


@register_stage("sample", SampleConfig, writes=("subnets",), check=check_sample, uses_data=False)
def sample(ctx: StageContext) -> None:
    """Subnets drawn from DMCP's chains: expected sampling and direct samples near the target."""
    cfg: SampleConfig = ctx.settings  # type: ignore[assignment]
    net = ctx.supernet()
    record = ctx.input_meta.get("dmcp")
    if not isinstance(record, dict):
        raise UserError("the sample stage draws from DMCP's alphas: run the dmcp stage first, or give --from a "
                        "dmcp/model.safetensors")  # fmt: skip
    chains = MarkovChannels.from_json(record.get("chains"), net, "the dmcp artifact")
    target = cfg.target_macs or float(record.get("target_macs", 0))
    if target <= 0:
        raise UserError(
            "the dmcp artifact records no target (an imported checkpoint): give --stages.sample.target-macs"
        )
    size = ctx.config.model.input_size
    check_target(target, net, chains, size, "--stages.sample.target-macs")
    macs = MacsModel(net, size)
    rng = np.random.default_rng((ctx.config.seed, 0xD3C9))
    found, drawn = direct_samples(chains, macs, target, cfg, rng)
    if len(found) < cfg.count:
        raise UserError(f"sample: only {len(found)} of {drawn:,} walks of the chains are within "
                        f"{cfg.tolerance:.1%} of {target:,.0f} MACs; raise --stages.sample.max-draws or "
                        f"--stages.sample.tolerance, or train the dmcp stage longer")  # fmt: skip
    expected = chains.expected_subnet()
    subnets = {f"{cfg.prefix}-expected": expected}
    scores: dict[str, dict] = {
        f"{cfg.prefix}-expected": {"target_macs": target, "expected_macs": float(record.get("expected_macs", 0))}
    }
    for i, (channels, draw) in enumerate(found):
        subnets[f"{cfg.prefix}-direct-{i}"] = Subnet.of(channels)
        scores[f"{cfg.prefix}-direct-{i}"] = {"target_macs": target, "draw": draw}
    if ctx.accelerator.is_main_process:
        ctx.dir.mkdir(parents=True, exist_ok=True)
        plot_marginals(ctx.dir / "marginals.png", chains)
    ctx.accelerator.print(f"sample: target {target / 1e6:,.3f}M MACs; {cfg.prefix}-expected "
                          f"{macs.exact(expected) / 1e6:,.3f}M; {len(found)} direct samples in {drawn:,} walks: "
                          + ", ".join(f"{macs.exact(s) / 1e6:,.3f}M" for n, s in subnets.items()
                                      if "direct" in n))  # fmt: skip
    ctx.save_subnets(net, subnets, scores)
