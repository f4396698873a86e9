"""DMCP's training stage, `dmcp`: weights, then weights and Markov channel alphas alternately.

It trains the supernet with `dslim.methods.dmcp.Dmcp` towards `--stages.dmcp.target-macs`, validating the largest
subnet after BatchNorm recalibration each epoch and logging the expected MACs. Its artifact is a plain supernet
(every later stage and command reads it as any other) whose metadata carries the method's `DmcpRecord` (`"dmcp"`:
target, expected MACs, and per group `keep`, `size`, `alpha`); the alphas live outside the weights so that the
artifact loads into the architecture as it is. The `sample` stage (`dslim.stages.sample`) draws subnets from it.
"""

from __future__ import annotations

from dslim.config import Config
from dslim.errors import UserError
from dslim.methods.dmcp import Dmcp, DmcpConfig, WidthGrid
from dslim.methods.dmcp_chains import MarkovChannels, make_chains, narrowest
from dslim.models.base import Supernet
from dslim.models.complexity import MacsModel
from dslim.stages.context import StageContext
from dslim.stages.registry import register_stage


def dmcp_chains(config: Config, net: Supernet) -> tuple[MarkovChannels, WidthGrid]:
    """The chains this run's dmcp stage trains (`config.stages.dmcp`'s widths), fresh alphas, and the width grid of
    its smallest and random subnets."""
    cfg: DmcpConfig = config.stages.dmcp  # type: ignore[attr-defined]
    max_width = getattr(net, "max_width", config.model.max_width)
    chains = MarkovChannels(make_chains(net, cfg.min_width, max_width, cfg.width_step))
    return chains, WidthGrid.of(cfg.min_width, max_width, cfg.width_step)


def reachable(net: Supernet, chains: MarkovChannels, input_size: int) -> tuple[int, int]:
    """MACs of the chains' narrowest and widest subnets."""
    macs = MacsModel(net, input_size)
    return macs.exact(narrowest(chains.chains)), macs.exact(net.largest())


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
    chains, _ = dmcp_chains(config, net)
    check_target(cfg.target_macs, net, chains, config.model.input_size, "--stages.dmcp.target-macs")


@register_stage("dmcp", DmcpConfig, from_scratch=True, check=check)
def dmcp(ctx: StageContext) -> None:
    """DMCP: weights, then weights and Markov channel alphas alternately, towards a MACs target."""
    cfg: DmcpConfig = ctx.settings  # type: ignore[assignment]
    net = ctx.supernet()
    check(ctx.config, net, cfg)  # the supernet read may differ from the model settings (`--from`)
    size = ctx.config.model.input_size
    macs = MacsModel(net, size)
    chains, grid = dmcp_chains(ctx.config, net)
    method = Dmcp(cfg, net, macs, chains.to(net.device), grid)
    trainer = ctx.trainer(net, method, cfg)
    validate = ctx.epoch_evaluator(trainer, {"largest": net.largest()})

    def on_epoch_end(epoch: int) -> dict[str, float]:
        out = {**validate(epoch), "expected_macs": round(method.expected_macs())}
        ctx.accelerator.print(f"dmcp epoch {epoch + 1}: expected {out['expected_macs'] / 1e6:,.3f}M MACs "
                              f"(target {cfg.target_macs / 1e6:,.3f}M)")  # fmt: skip
        return out

    chains = method.chains.chains
    ctx.accelerator.print(f"dmcp: {cfg.epochs} epochs (alphas from epoch {cfg.warmup * cfg.epochs:g}), "
                          f"{sum(c.bins for c in chains)} bins in {len(chains)} chains, target "
                          f"{cfg.target_macs:,.0f} MACs, global batch {trainer.global_batch}")  # fmt: skip
    trainer.fit(lambda epoch: ctx.loader("train", epoch), on_epoch_end)
    ctx.save_supernet(net, dmcp=method.finish(net).to_json())
