"""Which images one process reads in one epoch, in which order, with which seeds: decided once for every backend.

- Training: every process draws the same permutation of the whole split from `(seed, epoch)` and reads it as global
  batches: batch `i * num_shards + s` of the permutation is process `s`'s `i`-th batch. So shards are disjoint, every
  process gets `n // num_shards` images and runs the same number of steps, and P processes read, step by step, the
  images one process reads when it accumulates P micro-batches per step (a stage's `global_batch` fixed, or `grad_accum`
  P): runs with different numbers of processes stay comparable (tests/test_scale.py). Nothing is padded: a process's
  last partial batch is dropped, so an epoch leaves out fewer than `num_shards * (batch_size + 1)` images, other ones
  each epoch. Augmentations are seeded from `(seed, epoch, shard)` (DALI, one seed per pipeline) or from `(seed, epoch,
  image)` (PIL). Hence the same `(seed, epoch, shard)` gives the same batches, and a resumed run rebuilds epoch `e`
  exactly.
- Evaluation (`val`, `holdout`): the split in its fixed order, cut into `num_shards` contiguous parts (sizes differ
  by at most one, as DALI cuts them), the last batch partial: every image is seen exactly once over all processes,
  with no padding. Processes may therefore run one batch more or fewer than each other: sum (correct, total) per
  process and reduce once after the loop, not per batch.
- WebDataset through DALI is the exception: DALI's reader shards the stored order itself (contiguous parts) and
  shuffles training samples in a buffer of images only, so shards should be shuffled when they are written, and
  runs with different numbers of processes read different batches. Every process still stops after the same number
  of whole batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from dslim.config import DataConfig
from dslim.data.images import Images

Batch = tuple[torch.Tensor, torch.Tensor]

HOLDOUT_SEED = 0
"""Seed of the held-out choice: fixed, so runs with different `--seed`s set aside the same images."""


def contiguous_share(n: int, shard_id: int, num_shards: int) -> np.ndarray:
    """Shard `shard_id`'s part of `range(n)` cut into `num_shards` contiguous parts, as DALI's readers cut it."""
    return np.arange(n * shard_id // num_shards, n * (shard_id + 1) // num_shards)


def interleaved_share(order: np.ndarray, shard_id: int, num_shards: int, batch_size: int) -> np.ndarray:
    """Shard `shard_id`'s `len(order) // num_shards` images of `order`, read as global batches of `num_shards`
    batches of `batch_size`: its `i`-th batch is the global order's batch `i * num_shards + shard_id`. The images
    left after the last whole global batch are cut into `num_shards` contiguous parts, so every shard gets the same
    number; `len(order) % num_shards` images are left out."""
    per_shard = len(order) // num_shards
    whole = per_shard // batch_size
    head = order[: whole * num_shards * batch_size].reshape(whole, num_shards, batch_size)[:, shard_id]
    rest = order[whole * num_shards * batch_size :]
    left = per_shard - whole * batch_size
    return np.concatenate([head.reshape(-1), rest[shard_id * left : (shard_id + 1) * left]])


def eval_resize(image_size: int, crop_fraction: float) -> int:
    """Shorter side before the evaluation center crop (256 for 224 at 0.875), rounded down as timm does."""
    return int(image_size / crop_fraction + 1e-6)


def stratified_holdout(labels: np.ndarray, count: int) -> np.ndarray:
    """Sorted positions of `count` images set aside from a split with `labels`, each class in proportion to its size.

    Every image gets its fractional rank inside its class under a fixed random permutation; the `count` smallest
    ranks win. So the first picks cover as many classes as possible, and a larger `count` only adds images.
    """
    rng = np.random.default_rng(HOLDOUT_SEED)
    shuffled = rng.permutation(len(labels))
    by_class = shuffled[np.argsort(labels[shuffled], kind="stable")]
    sizes = np.bincount(labels)
    starts = np.cumsum(sizes) - sizes
    sorted_labels = labels[by_class]
    rank = (np.arange(len(labels)) - starts[sorted_labels] + 0.5) / sizes[sorted_labels]
    # Equal ranks (classes of equal size) are ordered at random rather than by label.
    chosen = by_class[np.lexsort((rng.random(len(labels)), rank))[:count]]
    return np.sort(chosen)


@dataclass
class Plan:
    """One process's share of one split in one epoch; a backend turns it into batches."""

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
            return interleaved_share(np.random.default_rng([self.seed, self.epoch]).permutation(n), s, k,
                                     self.batch_size)  # fmt: skip
        return contiguous_share(n, s, k)

    def __len__(self) -> int:
        """Batches per epoch; the same on every process in training."""
        n = len(self.images) // self.num_shards if self.train else len(self.order())
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)
