"""Every check that can refuse a training command, run before its first byte is written.

The run directory and its config.json are made only once all of these have passed, so a refused command leaves
nothing behind, and running it again with the fix its message asks for is never refused as "started with another
config". Each check reads and builds on the `meta` device only; the data are listed, never decoded.
- the run directory (`dslim.io.outputs.check_run_dir`): a new or empty folder, or a run to continue, recorded with
  the same config (`check_record`);
- the data: present, with no more classes than the classifier; each split the stages read holds a batch for every
  process, the held-out images leave a batch to train on, an epoch holds a step of each training stage;
- the inputs: a stage that reads a supernet has one to read (`--from`, an earlier finished stage's artifact, or an
  earlier selected stage that writes one);
- `--from F` (`start_from`): a supernet artifact of the run's architecture (each channel group as wide, as many
  blocks) and classes; another class count is bridged only with `--from-new-classifier` (a new classifier).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from accelerate import Accelerator

from dslim.config import Config, option_name
from dslim.errors import UserError
from dslim.io import preprocessing
from dslim.io.artifacts import load_supernet
from dslim.models import from_config
from dslim.models.base import Supernet
from dslim.models.registry import arch_of
from dslim.stages.layout import RunLayout, stage_order
from dslim.stages.registry import STAGES


def check_data(config: Config, stages: Sequence[str], accelerator: Accelerator) -> None:
    """The data the `stages` read: present, classes within the classifier's, every split cut into batches for this
    process as training and evaluation will cut it (a label out of range or a batch larger than the data would
    otherwise fail minutes into a run)."""
    if not any(STAGES.get(s).uses_data for s in stages):
        return
    from dslim.data import build_loader, dataset_classes

    classes = dataset_classes(config.data)
    if classes > config.model.num_classes:
        raise UserError(
            f"the data in {config.data.root} has {classes} classes but --model.num-classes is "
            f"{config.model.num_classes}; set --model.num-classes {classes}"
        )
    shard = {"shard_id": accelerator.process_index, "num_shards": accelerator.num_processes}
    size = config.model.input_size
    batches = {split: len(build_loader(config.data, split, size, **shard))  # type: ignore[arg-type]
               for split in ("train", "val", *(("holdout",) if config.data.holdout else ()))}  # fmt: skip
    for name in stages:
        accum = getattr(getattr(config.stages, name), "grad_accum", None)
        if accum is not None and batches["train"] < accum:
            option = option_name(f"stages.{name}.grad_accum")
            raise UserError(f"an epoch holds {batches['train']} batches, fewer than {option} {accum}: lower it or "
                            "the batch size")  # fmt: skip


def check_inputs(config: Config, stages: Sequence[str], layout: RunLayout, seeded: bool) -> None:
    """Each of `stages` (in order; `seeded`: the first starts from `--from`) that reads a supernet has one."""
    order = stage_order(config)
    for i, name in enumerate(stages):
        stage = STAGES.get(name)
        if layout.finished(name) or "supernet" not in stage.reads or stage.from_scratch or (i == 0 and seeded):
            continue
        earlier = any("supernet" in STAGES.get(s).writes for s in stages[:i])
        if not earlier and layout.supernet_before(order, name) is None:
            raise UserError(f"stage {name} needs a trained supernet: run the earlier stages first, or give --from PATH")


def start_from(
    path: str | Path, config: Config, new_classifier: bool, accelerator: Accelerator
) -> tuple[Supernet, dict]:
    """The supernet artifact `--from` names, checked against the run's model; with `new_classifier`, its classifier
    replaced by a new one for the run's classes."""
    if not Path(path).is_file():
        raise UserError(f"--from {path}: no such file (give a stage's model.safetensors)")
    try:
        net, meta = load_supernet(path, arch_of(config.model))
    except UserError as e:
        raise UserError(f"--from {e}") from None
    # its weights need the inputs they were trained on
    preprocessing.check_matches(preprocessing.read(meta, path), config.data, path)
    with torch.device("meta"):
        want = from_config(config.model)
    groups = sorted(set(net.groups) | set(want.groups))
    for g in groups:
        have, need = (n.groups[g].max if g in n.groups else None for n in (net, want))
        if have != need:
            raise UserError(f"--from {path} is another {net.arch}: its channel group {g!r} is {have} channels wide, "
                            f"this run's model (--model.max-width and the other --model.* options) makes it {need}; "
                            "start from an artifact of this model, or set --model.* as it was made")  # fmt: skip
    if len(net.blocks) != len(want.blocks):
        raise UserError(f"--from {path} has {len(net.blocks)} blocks, this run's model {len(want.blocks)}")
    have, need = net.num_classes, config.model.num_classes
    if have != need and not new_classifier:
        raise UserError(f"--from {path} has {have} classes, this run's model {need} (--model.num-classes): "
                        f"give --from-new-classifier to start from it with a new {need}-class classifier")  # fmt: skip
    if have == need and new_classifier:
        raise UserError(f"--from-new-classifier: {path} already has {need} classes, as this run's model; leave it out")
    if new_classifier:
        net = net.with_classes(need)
        accelerator.print(f"--from {path}: a new classifier for {need} classes replaces its {have}-class one")
    named, wanted = sorted(net.named_subnets()), sorted(want.named_subnets())
    if net.bn_mode != want.bn_mode or named != wanted:
        accelerator.print(f"--from {path}: its {net.bn_mode} BatchNorm and named subnets ({', '.join(named)}) are "
                          f"used, not the config's ({want.bn_mode}; {', '.join(wanted)})")  # fmt: skip
    return net, meta
