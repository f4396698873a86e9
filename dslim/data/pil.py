"""The fallback without DALI: PIL + a torch DataLoader doing the same transforms as `dslim.data.dali`.

The random resized crop samples exactly as torchvision's `RandomResizedCrop` (area uniform, aspect ratio
log-uniform, ten attempts, then a center crop) and resizes as DALI does; only the random numbers and small
resampling details differ. The pad crop draws its window from the same distribution as DALI's. What follows the
crop (RandAugment, colour jitter, lighting, erasing) applies the draws of `dslim.data.augment`, as DALI does. Each
image's random numbers come from `(seed, epoch, image index)`, so batches do not depend on how images are spread
over workers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from dslim.config import DataConfig
from dslim.data import augment, pil_augment
from dslim.data.plan import Batch, Plan, eval_resize
from dslim.errors import UserError


def batches(plan: Plan) -> Iterator[Batch]:
    """Run one epoch of `plan` through a fresh DataLoader."""
    cfg = plan.cfg
    data_loader = DataLoader(
        _Images(plan),
        batch_size=plan.batch_size,
        drop_last=plan.drop_last,
        num_workers=cfg.workers,
    )
    try:
        yield from data_loader
    except UserError as e:
        # A worker's error arrives with its traceback inside the message: keep the one line meant for the user.
        message = str(e).strip().rsplit("UserError: ", 1)[-1]
        # The traceback holds the DataLoader's iterator in a reference cycle; left to the garbage collector, it
        # may be collected in a later DataLoader's forked worker, which then fails to shut it down.
        e.__traceback__ = None
    else:
        return
    raise UserError(message)


def random_resized_crop_box(
    width: int,
    height: int,
    area: tuple[float, float],
    ratio: tuple[float, float],
    rng: np.random.Generator,
) -> tuple[int, int, int, int]:
    """(left, top, width, height) of a random crop covering `area` of the image with aspect ratio in `ratio`."""
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = width * height * rng.uniform(*area)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    # No attempt fitted: the largest centered crop whose aspect ratio is in range.
    w, h = width, height
    if width / height < ratio[0]:
        h = round(width / ratio[0])
    elif width / height > ratio[1]:
        w = round(height * ratio[1])
    return (width - w) // 2, (height - h) // 2, w, h


def pad_crop_box(width: int, height: int, size: int, pad: int, rng: np.random.Generator) -> tuple[int, int]:
    """(left, top) of a random `size` x `size` window of the image zero-padded by `pad` on each side, in the
    unpadded image's coordinates (negative: the window starts in the padding)."""
    left = int(rng.integers(0, max(width + 2 * pad - size, 0) + 1)) - pad
    top = int(rng.integers(0, max(height + 2 * pad - size, 0) + 1)) - pad
    return left, top


def train_transform(
    image: Image.Image, size: int, cfg: DataConfig, rng: np.random.Generator, resample: int = Image.BILINEAR
) -> Image.Image:
    """`cfg.augment` to `size` x `size` (random resized crop; pad and random crop; or resize and random crop),
    then a random horizontal flip if `cfg.flip`."""
    if cfg.augment == "random_resized_crop":
        left, top, w, h = random_resized_crop_box(*image.size, cfg.random_area, cfg.random_aspect_ratio, rng)
        # Resizing straight from the crop box resamples only the box.
        image = image.resize((size, size), resample, box=(left, top, left + w, top + h))
    else:
        if cfg.augment == "resize_crop":
            image = _resize_shorter(image, eval_resize(size, cfg.crop_fraction), resample)
        left, top = pad_crop_box(*image.size, size, cfg.pad, rng)
        # PIL fills the part of a crop outside the image with zeros: that is the padding.
        image = image.crop((left, top, left + size, top + size))
    if cfg.flip and rng.random() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    return image


def eval_transform(image: Image.Image, size: int, crop_fraction: float, resample: int = Image.BILINEAR) -> Image.Image:
    """Resize the shorter side to `size / crop_fraction`, then take the centered `size` x `size` crop."""
    image = _resize_shorter(image, eval_resize(size, crop_fraction), resample)
    # Halves round up, as DALI's centered crop does.
    left, top = (image.size[0] - size + 1) // 2, (image.size[1] - size + 1) // 2
    return image.crop((left, top, left + size, top + size))


def _resize_shorter(image: Image.Image, shorter: int, resample: int) -> Image.Image:
    w, h = image.size
    scale = shorter / min(w, h)
    new_size = (shorter, round(h * scale)) if w <= h else (round(w * scale), shorter)
    return image if new_size == image.size else image.resize(new_size, resample)


class _Images(Dataset):
    """This process's images for one epoch, in `plan.order()`, as normalized float32 CHW tensors."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.order = plan.order()

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int]:
        plan, i = self.plan, int(self.order[position])
        cfg, size = plan.cfg, plan.image_size
        image = plan.images.decode(i)
        if plan.train:
            rng = augment.image_rng(plan.seed, plan.epoch, i)
            draws = augment.draw(cfg, size, [rng])
            resample = pil_augment.RESAMPLE[int(draws.interpolation[0])]
            image = train_transform(image, size, cfg, np.random.default_rng([plan.seed, plan.epoch, i]), resample)
            pixels = np.asarray(pil_augment.randaugment(image, draws, 0, cfg))
            if augment.needs_colour(cfg):
                pixels = pil_augment.colour(pixels, draws, 0)
        else:
            resample = pil_augment.RESAMPLE[augment.interpolation_code(cfg.eval_interpolation)]
            pixels = np.asarray(eval_transform(image, size, cfg.crop_fraction, resample))
        mean, std = (255 * np.asarray(v, np.float32).reshape(3, 1, 1) for v in (cfg.mean, cfg.std))
        normalized = (pixels.transpose(2, 0, 1).astype(np.float32) - mean) / std
        if plan.train and cfg.erasing.prob > 0:
            pil_augment.erase(normalized, draws.erase[0], cfg.erasing.mode, rng)
        return torch.from_numpy(normalized), int(plan.images.labels[i])
