"""BlockDrop's stages: `pretrain` (the base ResNet), `policy` (curriculum policy learning, the ResNet frozen) and
`finetune` (both jointly); the method is `dslim.methods.blockdrop`. The existing `evaluate` and `export` stages
then report and export the policy-routed model (`dslim.models.policy`).

A base ResNet trained elsewhere enters through `--from` (e.g. `--stages policy finetune evaluate export --from
base.safetensors`); if it was built without a policy, the run's model (`--model.block-policy`) supplies a fresh one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from dslim.config import Config
from dslim.errors import UserError
from dslim.evaluation.accuracy import evaluate_dynamic
from dslim.methods.blockdrop import (
    FinetuneConfig,
    JointFinetune,
    PolicyConfig,
    PolicyLearning,
    Pretrain,
    PretrainConfig,
    held_on,
)
from dslim.models import from_config
from dslim.models.base import Supernet
from dslim.models.policy import PolicyRouting
from dslim.stages.context import StageContext
from dslim.stages.registry import register_stage
from dslim.training import Trainer


def check_policy(config: Config, net: Supernet, cfg: PolicyConfig | FinetuneConfig) -> None:
    if not isinstance(net, PolicyRouting):
        raise UserError(f"BlockDrop's stages need a ResNet (cifar_resnet32, cifar_resnet110, resnet101, ...), "
                        f"not {net.arch}")  # fmt: skip
    if not config.model.block_policy:
        raise UserError("BlockDrop's stages train a policy network: set --model.block-policy True")
    short = isinstance(cfg, PolicyConfig) and 0 < cfg.curriculum_blocks * cfg.epochs < len(net.blocks)
    # a short curriculum is fine when fine-tuning follows: it learns every block (the original's ImageNet run)
    later = config.pipeline[config.pipeline.index("policy") + 1 :] if "policy" in config.pipeline else ()
    if short and "finetune" not in later:
        raise UserError(
            f"the curriculum makes {cfg.curriculum_blocks} of {len(net.blocks)} blocks learnable per epoch, so "
            f"{cfg.epochs} epochs leave blocks never learnt and no finetune stage follows: raise "
            "--stages.policy.epochs or --stages.policy.curriculum-blocks"
        )


def with_policy(net: Supernet, config: Config) -> Supernet:
    """`net`, or, for a base built without a policy (`--from` elsewhere), the run's model holding `net`'s weights
    and a fresh policy."""
    if net.is_dynamic:
        return net
    full = from_config(config.model).to(net.device)
    try:
        missing, unexpected = full.load_state_dict(net.state_dict(), strict=False)
    except RuntimeError as e:
        raise UserError(f"the starting supernet does not fit --model ({str(e).splitlines()[0]})") from None
    if unexpected or any(not k.startswith("policy.") for k in missing):
        raise UserError(f"the starting supernet does not fit --model (its weights miss {missing[:3]} and have "
                        f"{unexpected[:3]} in excess)")  # fmt: skip
    full.name_subnets(net.extra_names)
    return full


def check_blocks(config: Config, net: Supernet, cfg: PretrainConfig) -> None:
    if not isinstance(net, PolicyRouting):
        raise UserError(f"the pretrain stage trains a ResNet (cifar_resnet32, cifar_resnet110, resnet101, ...), "
                        f"not {net.arch}")  # fmt: skip


@register_stage("pretrain", PretrainConfig, from_scratch=True, check=check_blocks)
def pretrain(ctx: StageContext) -> None:
    """BlockDrop's base: the ResNet trained on the labels (normally, or with stochastic depth)."""
    cfg: PretrainConfig = ctx.settings  # type: ignore[assignment]
    net = ctx.supernet()
    trainer = ctx.trainer(net, Pretrain(cfg), cfg)
    ctx.accelerator.print(f"pretrain: {cfg.epochs} epochs, global batch {trainer.global_batch}, "
                          f"peak lr {trainer.peaks['weights']:.4g}, stochastic depth {cfg.drop_rate}")  # fmt: skip
    full = {net.name_of(net.largest(), "largest"): net.largest()}
    trainer.fit(lambda epoch: ctx.loader("train", epoch), ctx.epoch_evaluator(trainer, full))
    ctx.save_trained(trainer)


def curriculum_evaluator(ctx: StageContext, trainer: Trainer, held: Callable[[int], int]) -> Callable[[int], dict]:
    """Top-1 and blocks per image of the greedy policy after each epoch, with the blocks the curriculum holds on
    in that epoch held on."""
    acc = ctx.accelerator

    def evaluate_epoch(epoch: int) -> dict[str, float]:
        net, h = trainer.supernet, held(epoch)
        totals = torch.zeros(3, device=net.device)  # correct, blocks, images
        with net.using(train=False), torch.no_grad(), acc.autocast():
            for images, labels in ctx.loader("val"):
                images, labels = images.to(net.device), labels.to(net.device).view(-1)
                keep = net.policy(images) >= 0.5  # type: ignore[attr-defined]
                keep[:, :h] = True
                logits = net(images, keep=keep)
                totals += torch.stack([(logits.argmax(1) == labels).sum(), keep.sum(), torch.tensor(len(labels))])
        if acc.num_processes > 1:
            totals = acc.reduce(totals, reduction="sum")
        correct, blocks, n = totals.tolist()
        return {"top1/dynamic": round(100 * correct / n, 3), "blocks/dynamic": round(blocks / n, 3)}

    return evaluate_epoch


@register_stage("policy", PolicyConfig, check=check_policy)
def policy(ctx: StageContext) -> None:
    """BlockDrop's curriculum: the policy learns by REINFORCE, the ResNet frozen in eval mode."""
    cfg: PolicyConfig = ctx.settings  # type: ignore[assignment]
    net = with_policy(ctx.supernet(), ctx.config)
    blocks = len(net.blocks)
    net.requires_grad_(False)
    net.policy.requires_grad_(True)  # type: ignore[union-attr]
    trainer = ctx.trainer(net, PolicyLearning(cfg), cfg)
    ctx.accelerator.print(f"policy: {cfg.epochs} epochs over {blocks} blocks, {cfg.curriculum_blocks or blocks} "
                          f"more learnable each epoch, global batch {trainer.global_batch}")  # fmt: skip
    held = lambda epoch: held_on(epoch, blocks, cfg.curriculum_blocks)  # noqa: E731
    trainer.fit(lambda epoch: ctx.loader("train", epoch), curriculum_evaluator(ctx, trainer, held))
    net.requires_grad_(True)
    net.router_trained = True
    ctx.save_trained(trainer, net)


@register_stage("finetune", FinetuneConfig, check=check_policy)
def finetune(ctx: StageContext) -> None:
    """BlockDrop's joint fine-tuning: ResNet and policy together (cross-entropy + policy gradient)."""
    cfg: FinetuneConfig = ctx.settings  # type: ignore[assignment]
    net = with_policy(ctx.supernet(), ctx.config)
    trainer = ctx.trainer(net, JointFinetune(cfg), cfg)
    ctx.accelerator.print(f"finetune: {cfg.epochs} epochs, penalty {cfg.penalty}, global batch "
                          f"{trainer.global_batch}")  # fmt: skip
    full = ctx.epoch_evaluator(trainer, {net.name_of(net.largest(), "largest"): net.largest()})
    size = ctx.config.model.input_size

    def evaluate_epoch(epoch: int) -> dict[str, float]:
        d = evaluate_dynamic(trainer.supernet, ctx.loader("val"), size, ctx.accelerator)
        return {**full(epoch), "top1/dynamic": round(d["top1"], 3), "blocks/dynamic": round(d["blocks_mean"], 3)}

    trainer.fit(lambda epoch: ctx.loader("train", epoch), evaluate_epoch)
    net.router_trained = True
    ctx.save_trained(trainer, net)
