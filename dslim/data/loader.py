"""`build_loader`: one process's batches of one split, the same whichever backend (DALI or PIL) produces them.

Order, sharding and seeds are decided here, once for both backends:

- Training: every process draws the same permutation of the whole split from `(seed, epoch)` and takes its own
  contiguous `n // num_shards` images of it, so shards are disjoint, every process runs the same number of steps,
  and the few images left over differ from epoch to epoch. Augmentations are seeded from `(seed, epoch, shard)`.
  Hence the same `(seed, epoch, shard)` gives the same batches, and a resumed run rebuilds epoch `e` exactly with
  `build_loader(..., epoch=e)` or `loader.set_epoch(e)`: every iteration builds a fresh pipeline for the epoch.
- Evaluation: the split in its fixed order, cut into `num_shards` contiguous parts (sizes differ by at most one,
  as DALI cuts them), the last batch partial: every image is seen exactly once over all processes, with no
  padding. Processes may therefore run one batch more or fewer than each other: sum (correct, total) per process
  and reduce once after the loop, not per batch.
- WebDataset through DALI is the exception: DALI's reader shards the stored order itself and shuffles training
  samples in a buffer of `SHUFFLE_BUFFER` images only, so shards should be shuffled when they are written.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from dslim.config import DataConfig
from dslim.data.digits import digits_root
from dslim.data.images import Images, scan
from dslim.errors import UserError

Batch = tuple[torch.Tensor, torch.Tensor]


def resolve_root(cfg: DataConfig) -> Path:
    """The dataset folder: `cfg.root`, or the built-in digits (written on first use) when it is `digits`."""
    if cfg.root == "digits":
        return digits_root(cfg.cache_dir)
    return Path(cfg.root).expanduser()


def build_loader(
    cfg: DataConfig,
    split: Literal["train", "val"],
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

    `split="train"` applies training augmentation (random resized crop, flip) and drops the last partial batch
    unless `drop_last=False`; `split="val"` applies the evaluation resize and center crop and keeps it.
    `device_id` is the GPU of the `mixed` DALI decoder (default: the current CUDA device); images then arrive on
    that GPU, otherwise on the CPU.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', not {split!r}")
    if not 0 <= shard_id < num_shards:
        raise ValueError(f"shard_id {shard_id} is not in [0, {num_shards})")
    if cfg.loader == "dali" and cfg.decoder == "mixed":
        if not torch.cuda.is_available():
            raise UserError("--data.decoder mixed decodes on the GPU but CUDA is not available; use --data.decoder cpu")
        if device_id is None:
            device_id = torch.cuda.current_device()
    images = scan(resolve_root(cfg), split, cfg.format, Path(cfg.cache_dir).expanduser())
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
        raise UserError(
            f"the {split} split has {len(loader.order())} images per process, fewer than one batch of "
            f"{loader.batch_size}; lower the batch size"
        )
    return loader


def contiguous_share(n: int, shard_id: int, num_shards: int) -> np.ndarray:
    """Shard `shard_id`'s part of `range(n)` cut into `num_shards` contiguous parts, as DALI's readers cut it."""
    return np.arange(n * shard_id // num_shards, n * (shard_id + 1) // num_shards)


def eval_resize(image_size: int, crop_fraction: float) -> int:
    """Shorter side before the evaluation center crop (256 for 224 at 0.875), rounded down as timm does."""
    return int(image_size / crop_fraction + 1e-6)


@dataclass
class Loader:
    """An iterable of `(images, labels)` batches for one epoch: images float32 NCHW normalized, labels int64.

    Iterating twice gives the same batches; `set_epoch` moves to another epoch.
    """

    cfg: DataConfig
    images: Images = field(repr=False)
    train: bool
    image_size: int
    shard_id: int
    num_shards: int
    seed: int
    epoch: int
    drop_last: bool
    device_id: int | None

    @property
    def num_classes(self) -> int:
        return self.images.num_classes

    @property
    def num_images(self) -> int:
        """Images in the whole split (all processes together)."""
        return len(self.images)

    @property
    def batch_size(self) -> int:
        return self.cfg.batch_size if self.train else self.cfg.eval_batch_size

    @property
    def augment_seed(self) -> int:
        """Seed of this process's augmentations in this epoch (DALI pipeline seed)."""
        return int(np.random.SeedSequence([self.seed, self.epoch, self.shard_id]).generate_state(1)[0] >> 1)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> np.ndarray:
        """Indices into `images` that this process reads this epoch, in reading order."""
        n, k, s = len(self.images), self.num_shards, self.shard_id
        if self.train:
            per_shard = n // k
            permutation = np.random.default_rng([self.seed, self.epoch]).permutation(n)
            return permutation[s * per_shard : (s + 1) * per_shard]
        return contiguous_share(n, s, k)

    def __len__(self) -> int:
        """Batches per epoch; the same on every process in training."""
        n = len(self.images) // self.num_shards if self.train else len(self.order())
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        if self.cfg.loader == "dali":
            from dslim.data import dali as backend
        else:
            from dslim.data import pil as backend
        # DALI's WebDataset shards may hold one image more than `order()`; every process stops at the same count.
        return islice(backend.batches(self), len(self))
