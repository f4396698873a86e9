"""`bn_recalibration`: BatchNorm statistics computed afresh for chosen subnets, without gradients.

US-Net's BN calibration (shared affine, statistics for any width after training; "about 2,000 images suffice")
and DS-Net's BN reset (private statistics re-estimated after the supernet stage) are the same operation: for each
subnet, reset its statistics in every `SlimBatchNorm2d`, run a few training batches through it with BatchNorm in
train mode and `momentum=None` (a cumulative average), and keep the result in the model, so it is saved with the
stage's artifact. The released US-Net calibration left BatchNorm in eval mode and so never updated anything;
here only the BatchNorm layers are put in train mode (dropout and the rest behave as at evaluation, so the
statistics describe the activations evaluation will see), whatever mode the model was in.

Statistics are those of `torch.nn.BatchNorm2d` with `momentum=None`: the mean over batches of each batch's mean
(with equal batch sizes exactly the mean over all calibration images) and of each batch's unbiased variance (an
unbiased estimate of the population variance; it leaves out the spread of the batch means that the variance
pooled over all calibration images would include, as PyTorch and the original do).
Across processes each process's averages are weighted by its number of batches and summed in one reduction,
which gives exactly what one process would compute over all processes' batches, even if their counts differ.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterable, Iterator, Mapping

import torch

from dslim.config import Config
from dslim.errors import UserError
from dslim.models.base import Supernet
from dslim.nn import SlimBatchNorm2d
from dslim.subnet import Subnet
from dslim.ui import progress


def batchnorms(supernet: Supernet) -> list[SlimBatchNorm2d]:
    return [m for m in supernet.modules() if isinstance(m, SlimBatchNorm2d)]


def has_statistics(supernet: Supernet, subnet: Subnet) -> bool:
    """Whether every BatchNorm holds statistics for `subnet` (evaluation and export need them)."""
    return all(bn.stats_for(subnet.key) is not None for bn in batchnorms(supernet))


def _reset(bn: SlimBatchNorm2d, subnet: Subnet, device: torch.device) -> None:
    channels = bn.channels(subnet)
    bn.affine_params(subnet.key, channels)  # a switchable BN without this subnet's affine raises a UserError
    bn.add_subnet(subnet.key, channels)
    stats = bn.stats[subnet.key].to(device)
    stats.running_mean.zero_()
    stats.running_var.fill_(1.0)
    stats.num_batches_tracked.zero_()


def _reduce(supernet: Supernet, subnets: Iterable[Subnet], accelerator) -> None:  # type: ignore[no-untyped-def]
    """Weighted mean over processes of every statistic: one all-reduce of (n * mean, n * var, n) for all of them."""
    stats = [bn.stats[s.key] for s in subnets for bn in batchnorms(supernet)]
    n = [s.num_batches_tracked.to(s.running_mean.dtype) for s in stats]
    flat = torch.cat([torch.cat([w * s.running_mean, w * s.running_var, w.view(1)]) for w, s in zip(n, stats)])
    flat = accelerator.reduce(flat, reduction="sum")
    offset = 0
    for s in stats:
        c = s.running_mean.numel()
        total = flat[offset + 2 * c]
        if total > 0:  # a BatchNorm no process ran (a dropped block) keeps its reset values
            s.running_mean.copy_(flat[offset : offset + c] / total)
            s.running_var.copy_(flat[offset + c : offset + 2 * c] / total)
            s.num_batches_tracked.fill_(int(total.round()))
        offset += 2 * c + 1


def recalibrate(
    supernet: Supernet,
    subnets: Mapping[str, Subnet],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    num_batches: int,
    accelerator=None,  # type: ignore[no-untyped-def]
    *,
    show: bool = True,
) -> None:
    """Reset and recompute every `subnets` statistics from the first `num_batches` of `batches` (per process).

    `supernet` is the unwrapped model (a DDP wrapper would broadcast rank 0's buffers at each forward). The
    batches are drawn once: each one runs through every subnet in turn, so all subnets see the same images and
    nothing is held in memory. Momentum, tracking, mode and the active subnet are restored afterwards.
    `show=False` hides the progress bar (a search calibrating thousands of candidates).
    """
    if num_batches < 1:
        raise UserError(f"BN recalibration needs at least one batch, not {num_batches}")
    if not subnets:
        return
    device = supernet.device
    bns = batchnorms(supernet)
    for subnet in subnets.values():
        supernet.check(subnet)
        for bn in bns:
            _reset(bn, subnet, device)
    saved = [(bn.momentum, bn.track) for bn in bns]
    try:
        with supernet.using(train=False):  # dropout and the rest as at evaluation; only BatchNorm in train mode
            for bn in bns:
                bn.train()
                bn.momentum, bn.track = None, True
            autocast = accelerator.autocast() if accelerator is not None else torch.autocast(device.type, enabled=False)
            total = min(num_batches, len(batches)) if hasattr(batches, "__len__") else num_batches
            seen = 0
            with torch.no_grad(), autocast:
                chosen = itertools.islice(batches, num_batches)
                if show:
                    chosen = progress(chosen, f"BN calibration ({len(subnets)} subnets)", total, accelerator)
                for images, _ in chosen:
                    images = images.to(device, non_blocking=True)
                    for subnet in subnets.values():
                        supernet.set_subnet(subnet)
                        supernet(images)
                    seen += 1
        if seen == 0:
            raise UserError("BN recalibration got no batches: the training split is empty")
        if accelerator is not None and accelerator.num_processes > 1:
            _reduce(supernet, subnets.values(), accelerator)
    finally:
        for bn, (momentum, track) in zip(bns, saved):
            bn.momentum, bn.track = momentum, track


@contextlib.contextmanager
def scratch_statistics(supernet: Supernet) -> Iterator[None]:
    """Statistics computed inside the block are thrown away at its end: a search scoring thousands of candidate
    subnets neither grows the model nor its artifact."""
    kept = [(bn, set(bn.stats.keys())) for bn in batchnorms(supernet)]
    try:
        yield
    finally:
        for bn, keys in kept:
            for key in [k for k in bn.stats.keys() if k not in keys]:
                del bn.stats[key]


@contextlib.contextmanager
def batch_statistics(supernet: Supernet) -> Iterator[None]:
    """Inside the block every BatchNorm normalizes by the statistics of the batch it sees and records nothing,
    whatever the model's mode; the model is put in eval mode (dropout off), restored afterwards. For scoring many
    subnets on large batches without computing statistics for each (AutoSlim's search)."""
    bns = batchnorms(supernet)
    saved = [(bn.training, bn.track) for bn in bns]
    was_training = supernet.training
    supernet.eval()
    try:
        for bn in bns:
            bn.train()
            bn.track = False
        yield
    finally:
        supernet.train(was_training)
        for bn, (training, track) in zip(bns, saved):
            bn.train(training)
            bn.track = track


def shard_of(accelerator) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """`build_loader`'s sharding arguments for this process."""
    if accelerator is None:
        return {}
    return {"shard_id": accelerator.process_index, "num_shards": accelerator.num_processes}


def calibrate_missing(
    supernet: Supernet,
    config: Config,
    subnets: Mapping[str, Subnet],
    num_batches: int,
    *,
    accelerator=None,  # type: ignore[no-untyped-def]
) -> None:
    """Give every subnet statistics before evaluation or export, or say why it cannot have them.

    With a shared affine (calibrated or private BatchNorm) any subnet can be calibrated from one checkpoint (the
    released US-Net could not): those without statistics are calibrated on `num_batches` training batches (a run
    uses its evaluate stage's `calibrate_batches`: `dslim.stages.evaluate.calibration_batches`). Switchable
    BatchNorm has an affine only for the subnets it was trained at. Nothing to calibrate: no data is read and no
    process waits for another.
    """
    from dslim.data import build_loader

    missing = {name: s for name, s in subnets.items() if not has_statistics(supernet, s)}
    if not missing:
        return
    if supernet.bn_mode == "switchable":
        raise UserError(
            f"no BatchNorm statistics for {', '.join(missing)}: switchable BatchNorm exists only for the subnets it "
            "was trained with; choose one of those"
        )
    batches = build_loader(config.data, "train", config.model.input_size, seed=config.seed, **shard_of(accelerator))
    recalibrate(supernet, missing, batches, num_batches, accelerator)
