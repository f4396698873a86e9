"""DALI pipelines: decode, random-resized-crop or pad-crop, or resize + center-crop, flip, normalize, on the CPU or
the GPU; in training, the augmentations drawn by `dslim.data.augment` (`dslim.data.dali_augment`).

Training fuses decoding with the random resized crop (`decoders.image_random_crop` decodes only the crop window).
Images held in memory (CIFAR) enter the pipeline decoded, through `external_source`. One pipeline is built per
iteration of a `Loader` (one epoch), seeded from `(seed, epoch, shard)`, so an epoch can be rebuilt exactly.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import torch
from nvidia.dali import fn, types
from nvidia.dali import math as dmath
from nvidia.dali.data_node import DataNode
from nvidia.dali.pipeline import Pipeline, do_not_convert, pipeline_def
from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

from dslim.config import DataConfig
from dslim.data import augment, dali_augment
from dslim.data.images import Images
from dslim.data.plan import Batch, Plan, contiguous_share, eval_resize
from dslim.errors import UserError

SHUFFLE_BUFFER = 1024
"""WebDataset training: images DALI's reader holds to shuffle from (a local shuffle, see `dslim.data.plan`)."""
PREFETCH = 2


def batches(plan: Plan) -> Iterator[Batch]:
    """Run one epoch of `plan` through a fresh DALI pipeline."""
    order = plan.order()
    images = plan.images
    webdataset = images.locations is not None
    done = 0
    try:
        pipe = _pipeline(plan, order)
        if images.pixels is None:
            policy = LastBatchPolicy.DROP if plan.drop_last else LastBatchPolicy.PARTIAL
            outputs = DALIGenericIterator(pipe, ["images", "labels"], reader_name="Reader", last_batch_policy=policy)
        else:
            # No reader: the epoch ends when `external_source` runs out, its last batch already partial.
            outputs = DALIGenericIterator(pipe, ["images", "labels"])
        for out in outputs:
            images_out, labels = out[0]["images"], out[0]["labels"]
            labels = _parse_ascii_ints(labels) if webdataset else labels[:, 0].long()
            yield images_out, labels.to(images_out.device)
            done += 1
    except RuntimeError as e:
        # DALI's decoding error does not say which file failed: find it among the images in flight.
        in_flight = (done + PREFETCH + 2) * plan.batch_size
        if webdataset and plan.train:
            # DALI read its share in stored order through a shuffle buffer: any image read so far may have failed.
            stored = contiguous_share(len(images), plan.shard_id, plan.num_shards)
            candidates = stored[: in_flight + SHUFFLE_BUFFER]
        else:
            candidates = order[done * plan.batch_size : in_flight]
        message = _first_undecodable(images, candidates)
        if message is None:
            raise
        e.__traceback__ = None  # frees the pipeline now rather than in some later garbage collection
    else:
        return
    raise UserError(message)


def _pipeline(plan: Plan, order: np.ndarray) -> Pipeline:
    cfg, size = plan.cfg, plan.image_size
    augmenting = plan.train and augment.any_drawn(cfg)

    def graph() -> tuple[DataNode, DataNode]:
        draws = dali_augment.source(cfg, size, _keys(plan, order), plan.seed, plan.epoch) if augmenting else None
        cropped, labels = _crops(plan, order, draws)
        if augmenting and cfg.randaugment.layers:
            cropped = dali_augment.randaugment(cropped, draws, cfg.randaugment.layers, cfg)
        if augmenting and augment.needs_colour(cfg):
            cropped = dali_augment.colour(cropped, draws)
        # The evaluation's center crop; training crops already have that size.
        out = fn.crop_mirror_normalize(
            cropped,
            dtype=types.FLOAT,
            output_layout="CHW",
            crop=(size, size),
            mean=[255 * m for m in cfg.mean],
            std=[255 * s for s in cfg.std],
            mirror=fn.random.coin_flip(probability=0.5) if plan.train and cfg.flip else 0,
        )
        if augmenting and cfg.erasing.prob > 0:
            out = dali_augment.erase(out, draws, cfg.erasing.count, cfg.erasing.mode)
        return out, labels

    return pipeline_def(
        graph,
        # RandAugment sends each image to its op by a conditional split of the batch.
        enable_conditionals=augmenting and cfg.randaugment.layers > 0,
        batch_size=plan.batch_size,
        num_threads=max(1, cfg.workers),
        # None (not types.CPU_ONLY_DEVICE_ID, which fails) runs a CPU-only pipeline without any GPU.
        device_id=plan.device_id if cfg.decoder == "mixed" else None,
        seed=plan.augment_seed,
        prefetch_queue_depth=PREFETCH,
    )()


@do_not_convert  # generators are left alone by the conditionals' converter
def _keys(plan: Plan, order: np.ndarray) -> Iterator[list[tuple[int, ...]]]:
    """Each batch's image keys for the draws, then more batches for whatever DALI prefetches past the epoch's end.

    Images of a known order are keyed by their index, as the PIL pipeline keys them; a file reader pads the last
    batch with its last image. A WebDataset reader shuffles by itself: its images are keyed by position."""
    size = plan.batch_size
    if plan.images.locations is None:
        for start in range(0, len(order), size):
            batch = [(int(i),) for i in order[start : start + size]]
            yield batch if plan.images.pixels is not None else batch + batch[-1:] * (size - len(batch))
    for b in itertools.count():
        yield [(plan.shard_id, b, p) for p in range(size)]


def _crops(plan: Plan, order: np.ndarray, draws: dict | None) -> tuple[DataNode, DataNode]:
    """Decoded images, randomly cropped to the image size (training) or resized for the center crop, and labels."""
    cfg, images, size = plan.cfg, plan.images, plan.image_size
    interp = dali_augment.interpolation(draws)
    if images.pixels is not None:
        decoded, labels = fn.external_source(
            source=_in_memory(images, order, plan.batch_size), num_outputs=2, batch=True, layout=["HWC", ""]
        )
    else:
        encoded, labels = _reader(plan, order)
        if plan.train and cfg.augment == "random_resized_crop":
            # Decoding fused with the random crop decodes only the crop window.
            cropped = fn.decoders.image_random_crop(
                encoded,
                device=cfg.decoder,
                output_type=types.RGB,
                random_area=list(cfg.random_area),
                random_aspect_ratio=list(cfg.random_aspect_ratio),
                num_attempts=10,
            )
            return fn.resize(cropped, resize_x=size, resize_y=size, interp_type=interp), labels
        decoded = fn.decoders.image(encoded, device=cfg.decoder, output_type=types.RGB)
    if plan.train:
        return _train_crop(decoded, size, cfg, interp), labels
    shorter = eval_resize(size, cfg.crop_fraction)
    if images.pixels is not None and min(images.pixels.shape[1:3]) == shorter:
        # In-memory images share one known size: at the evaluation size already (CIFAR at crop fraction 1), they
        # are not resampled.
        return decoded, labels
    interp = types.INTERP_CUBIC if cfg.eval_interpolation == "bicubic" else types.INTERP_LINEAR
    return fn.resize(decoded, resize_shorter=shorter, interp_type=interp), labels


def _reader(plan: Plan, order: np.ndarray) -> tuple[DataNode, DataNode]:
    """Encoded images and labels read from files (this process's share, in `order`) or from WebDataset shards."""
    images = plan.images
    if images.locations is None:
        # The file list is this process's share in this epoch's order: sharding and shuffling are ours.
        return fn.readers.file(
            files=[images.names[i] for i in order],
            labels=[int(images.labels[i]) for i in order],
            pad_last_batch=True,
            name="Reader",
        )
    encoded, labels = fn.readers.webdataset(
        paths=list(images.shards),
        index_paths=list(images.index_paths),
        ext=["jpg;jpeg;png", "cls"],
        case_sensitive_extensions=False,
        missing_component_behavior="error",
        shard_id=plan.shard_id,
        num_shards=plan.num_shards,
        random_shuffle=plan.train,
        initial_fill=SHUFFLE_BUFFER,
        pad_last_batch=True,
        name="Reader",
    )
    # `cls` is ASCII text of varying length: pad it so that a batch is one dense array.
    return encoded, fn.pad(labels, fill_value=0)


@do_not_convert
def _in_memory(images: Images, order: np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Batches of decoded images and (N, 1) int32 labels, as the file reader gives them; the last one partial."""
    for start in range(0, len(order), batch_size):
        chosen = order[start : start + batch_size]
        yield images.pixels[chosen], images.labels[chosen, None].astype(np.int32)


def _train_crop(decoded: DataNode, size: int, cfg: DataConfig, interp: DataNode | types.DALIInterpType) -> DataNode:
    """`cfg.augment` on decoded images: a random resized crop, or a random window of the zero-padded image (resized
    first as for evaluation, for `resize_crop`)."""
    if cfg.augment == "random_resized_crop":
        return fn.random_resized_crop(
            decoded,
            size=[size, size],
            random_area=list(cfg.random_area),
            random_aspect_ratio=list(cfg.random_aspect_ratio),
            num_attempts=10,
            interp_type=interp,
        )
    if cfg.augment == "resize_crop":
        decoded = fn.resize(decoded, resize_shorter=eval_resize(size, cfg.crop_fraction), interp_type=interp)
    # The window's corner is uniform over the integer positions inside the padded image (as `pil.pad_crop_box`);
    # slicing out of bounds with zero fill pads only where the window needs it.
    height_width = decoded.shape(dtype=types.FLOAT)[0:2]
    positions = dmath.max(height_width + (2 * cfg.pad - size + 1), 1.0)
    corner = dmath.floor(fn.random.uniform(range=[0.0, 1.0], shape=[2]) * positions) - cfg.pad
    return fn.slice(
        decoded,
        fn.cast(corner, dtype=types.INT32),
        np.array([size, size], dtype=np.int32),
        axis_names="HW",
        normalized_anchor=False,
        normalized_shape=False,
        out_of_bounds_policy="pad",
        fill_values=0,
    )


def _parse_ascii_ints(text: torch.Tensor) -> torch.Tensor:
    """Rows of ASCII digits (zero-padded, maybe with whitespace) -> int64 values."""
    digits = text.long() - ord("0")
    value = torch.zeros(len(text), dtype=torch.long, device=text.device)
    for column in digits.T:
        value = torch.where((column >= 0) & (column <= 9), value * 10 + column, value)
    return value


def _first_undecodable(images: Images, candidates: np.ndarray) -> str | None:
    """A message naming the first of `candidates` that PIL cannot read or decode, or None."""
    for i in candidates:
        try:
            images.decode(int(i))
        except UserError as e:
            return str(e)
    return None
