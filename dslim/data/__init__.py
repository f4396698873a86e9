"""Data loading: ImageFolder, WebDataset shards, CIFAR files or a built-in set (digits), through DALI or a PIL fallback.

`build_loader(cfg.data, "train", image_size, shard_id=rank, num_shards=world, seed=seed, epoch=epoch)` gives
one process's batches of one epoch; see `dslim.data.plan` for the sharding and determinism rules. Modules import
one way: `augment`, `cache` <- `digits`, `cifar` <- `digits_hard`, `images`, `dali_augment`, `pil_augment` <- `plan`
<- `dali`, `pil` <- `loader`.
"""

from dslim.data.digits import digits_root
from dslim.data.loader import Loader, build_loader, dataset_classes, holdout_indices, resolve_root

__all__ = ["Loader", "build_loader", "dataset_classes", "digits_root", "holdout_indices", "resolve_root"]
