"""`build_loader`: one process's batches of one split, the same whichever backend (DALI or PIL) produces them.

Order, sharding and seeds follow `dslim.data.plan`: the same `(seed, epoch, shard)` gives the same batches,
training shards are disjoint and equally long, evaluation covers every image exactly once over all processes.
Settings are checked here, before any pipeline is built, and reported as `UserError`s naming the option.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from dslim.config import DataConfig
from dslim.data.digits import digits_root
from dslim.data.digits_hard import digits_hard_root
from dslim.data.images import Images, count_classes, scan
from dslim.data.plan import Batch, Plan, stratified_holdout
from dslim.errors import UserError

Split = Literal["train", "val", "holdout"]

BUILT_IN = {"digits": digits_root, "digits-hard": digits_hard_root}
"""`--data.root` names of the built-in data sets (`dslim.data.cache`), each with the function writing it."""


def resolve_root(cfg: DataConfig) -> Path:
    """The dataset folder: `cfg.root`, or a built-in data set's folder (written on first use) when it names one."""
    if cfg.root in BUILT_IN:
        return BUILT_IN[cfg.root](cfg.cache_dir)
    return Path(cfg.root).expanduser()


def dataset_classes(cfg: DataConfig) -> int:
    """Number of classes of the data set, from folder names, CIFAR's layout or the WebDataset index; no image is
    decoded, so it can be checked against the model before training (the data settings are checked too)."""
    _check(cfg)
    return count_classes(resolve_root(cfg), cfg.format, Path(cfg.cache_dir).expanduser())


def holdout_indices(cfg: DataConfig) -> np.ndarray:
    """Positions, in the training split's fixed order, of the `cfg.holdout` images set aside (sorted).

    The order is the one every loader reads: folders by class, then by file name; CIFAR files record by record.
    The choice is stratified by class and does not depend on the run's seed.
    """
    _check(cfg)
    return _holdout(cfg, _scan(cfg, "train"))


def build_loader(
    cfg: DataConfig,
    split: Split,
    image_size: int,
    *,
    shard_id: int = 0,
    num_shards: int = 1,
    seed: int = 0,
    epoch: int = 0,
    drop_last: bool | None = None,
    device_id: int | None = None,
) -> Loader:
    """Batches `(images, labels)` of `split` for process `shard_id` of `num_shards`.

    `split="train"` applies training augmentation (`cfg.augment`, flip) and drops the last partial batch unless
    `drop_last=False`; it leaves out the `cfg.holdout` held-out images. `split="val"` and `split="holdout"` (those
    held-out images) apply the evaluation resize and center crop and keep the last partial batch.
    `device_id` is the GPU of the `mixed` DALI decoder (default: the current CUDA device); images then arrive on
    that GPU, otherwise on the CPU.
    """
    if split not in ("train", "val", "holdout"):
        raise ValueError(f"split must be 'train', 'val' or 'holdout', not {split!r}")
    if not 0 <= shard_id < num_shards:
        raise ValueError(f"shard_id {shard_id} is not in [0, {num_shards})")
    _check(cfg)
    if image_size < 1:
        raise UserError(f"image size {image_size} must be at least 1; set --model.input-size")
    if split == "holdout" and cfg.holdout == 0:
        raise UserError("the holdout split is empty; set --data.holdout N to set N training images aside")
    if cfg.loader == "dali" and cfg.decoder == "mixed":
        if not torch.cuda.is_available():
            raise UserError("--data.decoder mixed decodes on the GPU but CUDA is not available; use --data.decoder cpu")
        if device_id is None:
            device_id = torch.cuda.current_device()
    images = _scan(cfg, "val" if split == "val" else "train")
    if cfg.holdout and split != "val":
        held_out = _holdout(cfg, images)
        images = images.subset(held_out if split == "holdout" else np.setdiff1d(np.arange(len(images)), held_out))
    train = split == "train"
    loader = Loader(
        cfg,
        images,
        train=train,
        image_size=image_size,
        shard_id=shard_id,
        num_shards=num_shards,
        seed=seed,
        epoch=epoch,
        drop_last=train if drop_last is None else drop_last,
        device_id=device_id,
    )
    if len(loader) == 0:
        if not train and len(images) < num_shards:
            raise UserError(f"the {split} split has {len(images)} images, fewer than the {num_shards} processes")
        raise UserError(
            f"the {split} split has {len(loader.order())} images per process, fewer than one batch of "
            f"{loader.batch_size}; lower the batch size"
        )
    return loader


def _check(cfg: DataConfig) -> None:
    """Refuse settings that would divide by zero, loop or fail deep inside a pipeline."""
    at_least = {"batch_size": (cfg.batch_size, 1), "eval_batch_size": (cfg.eval_batch_size, 1),
                "workers": (cfg.workers, 0), "holdout": (cfg.holdout, 0), "pad": (cfg.pad, 0)}  # fmt: skip
    for name, (value, low) in at_least.items():
        if value < low:
            raise UserError(f"--data.{name.replace('_', '-')} is {value}; it must be at least {low}")
    if not 0 < cfg.crop_fraction <= 1:
        raise UserError(f"--data.crop-fraction is {cfg.crop_fraction}; it must be in (0, 1]")
    low, high = cfg.random_area
    if not 0 < low <= high <= 1:
        raise UserError(f"--data.random-area is {cfg.random_area}; it needs 0 < min <= max <= 1")
    low, high = cfg.random_aspect_ratio
    if not 0 < low <= high:
        raise UserError(f"--data.random-aspect-ratio is {cfg.random_aspect_ratio}; it needs 0 < min <= max")
    if cfg.color_jitter[3] > 0.5:
        raise UserError(f"--data.color-jitter hue {cfg.color_jitter[3]}: a hue rotation is at most 0.5 turn")
    low, high = cfg.erasing.area
    if not low <= high:
        raise UserError(f"--data.erasing.area is {cfg.erasing.area}; it needs min <= max")
    if not all(s > 0 for s in cfg.std):
        raise UserError(f"--data.std is {cfg.std}; every channel's standard deviation must be positive")
    if cfg.holdout and cfg.format == "webdataset":
        # DALI's WebDataset reader reads whole shards and cannot leave given samples out: the held-out images would
        # be trained on.
        raise UserError(
            "--data.holdout needs --data.format folder or cifar: DALI's WebDataset reader cannot leave images out"
        )


def _scan(cfg: DataConfig, split: Literal["train", "val"]) -> Images:
    return scan(resolve_root(cfg), split, cfg.format, Path(cfg.cache_dir).expanduser())


def _holdout(cfg: DataConfig, train: Images) -> np.ndarray:
    if cfg.holdout and cfg.holdout > len(train) - cfg.batch_size:
        raise UserError(
            f"--data.holdout {cfg.holdout} leaves less than one batch ({cfg.batch_size}) of the {len(train)} "
            f"training images; set it to at most {len(train) - cfg.batch_size}"
        )
    return stratified_holdout(train.labels, cfg.holdout)


class Loader(Plan):
    """An iterable of `(images, labels)` batches for one epoch: images float32 NCHW normalized, labels int64.

    Iterating twice gives the same batches; `set_epoch` moves to another epoch.
    """

    def __iter__(self) -> Iterator[Batch]:
        # Imported here: DALI is only loaded by those who use it.
        if self.cfg.loader == "dali":
            from dslim.data import dali as backend
        else:
            from dslim.data import pil as backend
        # DALI's WebDataset shards may hold one image more than `order()`; every process stops at the same count.
        return islice(backend.batches(self), len(self))
