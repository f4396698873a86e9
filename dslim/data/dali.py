"""DALI pipelines: decode, random-resized-crop or resize + center-crop, flip, normalize, on the CPU or the GPU.

Training fuses decoding with the random crop (`decoders.image_random_crop` decodes only the crop window). One
pipeline is built per iteration of a `Loader` (one epoch), seeded from `(seed, epoch, shard)`, so an epoch can be
rebuilt exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch
from nvidia.dali import fn, types
from nvidia.dali.pipeline import Pipeline
from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

from dslim.data.loader import contiguous_share, eval_resize
from dslim.errors import UserError

if TYPE_CHECKING:
    from dslim.data.loader import Batch, Loader

SHUFFLE_BUFFER = 1024
"""WebDataset training: images DALI's reader holds to shuffle from (a local shuffle, see `dslim.data.loader`)."""
PREFETCH = 2


def batches(loader: Loader) -> Iterator[Batch]:
    """Run one epoch of `loader` through a fresh DALI pipeline."""
    order = loader.order()
    webdataset = loader.images.locations is not None
    done = 0
    try:
        pipe = _pipeline(loader, order)
        policy = LastBatchPolicy.DROP if loader.drop_last else LastBatchPolicy.PARTIAL
        for out in DALIGenericIterator(pipe, ["images", "labels"], reader_name="Reader", last_batch_policy=policy):
            images, labels = out[0]["images"], out[0]["labels"]
            labels = _parse_ascii_ints(labels) if webdataset else labels[:, 0].long()
            yield images, labels.to(images.device)
            done += 1
    except RuntimeError as e:
        # DALI's decoding error does not say which file failed: find it among the images in flight.
        in_flight = (done + PREFETCH + 2) * loader.batch_size
        if webdataset and loader.train:
            # DALI read its share in stored order through a shuffle buffer: any image read so far may have failed.
            stored = contiguous_share(len(loader.images), loader.shard_id, loader.num_shards)
            candidates = stored[: in_flight + SHUFFLE_BUFFER]
        else:
            candidates = order[done * loader.batch_size : in_flight]
        message = _first_undecodable(loader, candidates)
        if message is None:
            raise
        e.__traceback__ = None  # frees the pipeline now rather than in some later garbage collection
    else:
        return
    raise UserError(message)


def _pipeline(loader: Loader, order: np.ndarray) -> Pipeline:
    cfg, images, size = loader.cfg, loader.images, loader.image_size
    pipe = Pipeline(
        batch_size=loader.batch_size,
        num_threads=max(1, cfg.workers),
        # None (not types.CPU_ONLY_DEVICE_ID, which fails) runs a CPU-only pipeline without any GPU.
        device_id=loader.device_id if cfg.decoder == "mixed" else None,
        seed=loader.augment_seed,
        prefetch_queue_depth=PREFETCH,
    )
    with pipe:
        if images.locations is None:
            # The file list is this process's share in this epoch's order: sharding and shuffling are ours.
            encoded, labels = fn.readers.file(
                files=[images.names[i] for i in order],
                labels=[int(images.labels[i]) for i in order],
                pad_last_batch=True,
                name="Reader",
            )
        else:
            encoded, labels = fn.readers.webdataset(
                paths=list(images.shards),
                index_paths=list(images.index_paths),
                ext=["jpg;jpeg;png", "cls"],
                case_sensitive_extensions=False,
                missing_component_behavior="error",
                shard_id=loader.shard_id,
                num_shards=loader.num_shards,
                random_shuffle=loader.train,
                initial_fill=SHUFFLE_BUFFER,
                pad_last_batch=True,
                name="Reader",
            )
            # `cls` is ASCII text of varying length: pad it so that a batch is one dense array.
            labels = fn.pad(labels, fill_value=0)
        mean = [255 * m for m in cfg.mean]
        std = [255 * s for s in cfg.std]
        if loader.train:
            decoded = fn.decoders.image_random_crop(
                encoded,
                device=cfg.decoder,
                output_type=types.RGB,
                random_area=list(cfg.random_area),
                random_aspect_ratio=list(cfg.random_aspect_ratio),
                num_attempts=10,
            )
            resized = fn.resize(decoded, resize_x=size, resize_y=size)
            out = fn.crop_mirror_normalize(
                resized,
                dtype=types.FLOAT,
                output_layout="CHW",
                mean=mean,
                std=std,
                mirror=fn.random.coin_flip(probability=0.5) if cfg.flip else 0,
            )
        else:
            decoded = fn.decoders.image(encoded, device=cfg.decoder, output_type=types.RGB)
            resized = fn.resize(decoded, resize_shorter=eval_resize(size, cfg.crop_fraction))
            out = fn.crop_mirror_normalize(
                resized, dtype=types.FLOAT, output_layout="CHW", crop=(size, size), mean=mean, std=std
            )
        pipe.set_outputs(out, labels)
    return pipe


def _parse_ascii_ints(text: torch.Tensor) -> torch.Tensor:
    """Rows of ASCII digits (zero-padded, maybe with whitespace) -> int64 values."""
    digits = text.long() - ord("0")
    value = torch.zeros(len(text), dtype=torch.long, device=text.device)
    for column in digits.T:
        value = torch.where((column >= 0) & (column <= 9), value * 10 + column, value)
    return value


def _first_undecodable(loader: Loader, candidates: np.ndarray) -> str | None:
    """A message naming the first of `candidates` that PIL cannot read or decode, or None."""
    for i in candidates:
        try:
            loader.images.decode(int(i))
        except UserError as e:
            return str(e)
    return None
