"""DMCP's `sample` stage: subnets drawn from the chains the `dmcp` stage learnt (`dslim.stages.dmcp`).

It reads the `DmcpRecord` in the metadata of the artifact it starts from (the dmcp stage's, or an imported DMCP
checkpoint's) and writes `sample/subnets.json`: `dmcp-expected` (expected sampling: each group at `round(E[c])`
channels, off the bins, as the original retrains it) and `dmcp-direct-0` ... (direct sampling: walks of the chains,
kept when their MACs are within `tolerance` of the target), with `sample/marginals.png`, the keep probability of
every bin. The subnet to retrain from scratch is then chosen by name: `--stages.retrain.subnets dmcp-expected`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch

from dslim.config import Config, NonNegativeFloat, Positive, in_range
from dslim.errors import UserError
from dslim.io import atomic_write
from dslim.methods.dmcp import DmcpRecord
from dslim.methods.dmcp_chains import MarkovChannels
from dslim.models.base import Supernet
from dslim.models.complexity import MacsModel
from dslim.stages.context import StageContext
from dslim.stages.dmcp import check_target, dmcp_chains
from dslim.stages.registry import register_stage
from dslim.subnet import Subnet


@dataclass(frozen=True)
class SampleConfig:
    """Subnets drawn from DMCP's learnt chains (see `dslim.stages.sample`)."""

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
        chains, _ = dmcp_chains(config, net)  # before any work: the chains the dmcp stage will train
        check_target(cfg.target_macs, net, chains, config.model.input_size, "--stages.sample.target-macs")


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
    if not isinstance(ctx.input_meta.get("dmcp"), dict):
        raise UserError("the sample stage draws from DMCP's alphas: run the dmcp stage first, or give --from a "
                        "dmcp/model.safetensors")  # fmt: skip
    record = DmcpRecord.from_json(ctx.input_meta["dmcp"], net, "the dmcp artifact")
    chains = record.chains
    target = cfg.target_macs or record.target_macs
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
    scores: dict[str, dict] = {f"{cfg.prefix}-expected": {"target_macs": target, "expected_macs": record.expected_macs}}
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
