"""Data loading: ImageFolder, WebDataset shards or the built-in digits, through DALI or a PIL fallback.

`build_loader(cfg.data, "train", image_size, shard_id=rank, num_shards=world, seed=seed, epoch=epoch)` gives
one process's batches of one epoch; see `dslim.data.loader` for the sharding and determinism rules.
"""

from dslim.data.digits import digits_root
from dslim.data.loader import Loader, build_loader, resolve_root

__all__ = ["Loader", "build_loader", "digits_root", "resolve_root"]
