"""The fallback without DALI: PIL + a torch DataLoader doing the same transforms as `dslim.data.dali`.

The random resized crop samples exactly as torchvision's `RandomResizedCrop` (area uniform, aspect ratio
log-uniform, ten attempts, then a center crop) and resizes bilinearly, as DALI does; only the random numbers and
small resampling details differ. The pad crop draws its window from the same distribution as DALI's. Each
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
        collate_fn=_Normalize(cfg.mean, cfg.std),
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


def train_transform(image: Image.Image, size: int, cfg: DataConfig, rng: np.random.Generator) -> Image.Image:
    """`cfg.augment` to `size` x `size` (random resized crop, or pad and random crop), then a random horizontal flip
    if `cfg.flip`."""
    if cfg.augment == "pad_crop":
        left, top = pad_crop_box(*image.size, size, cfg.pad, rng)
        # PIL fills the part of a crop outside the image with zeros: that is the padding.
        image = image.crop((left, top, left + size, top + size))
    else:
        left, top, w, h = random_resized_crop_box(*image.size, cfg.random_area, cfg.random_aspect_ratio, rng)
        # Resizing straight from the crop box resamples only the box.
        image = image.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
    if cfg.flip and rng.random() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    return image


def eval_transform(image: Image.Image, size: int, crop_fraction: float) -> Image.Image:
    """Resize the shorter side to `size / crop_fraction`, then take the centered `size` x `size` crop."""
    shorter = eval_resize(size, crop_fraction)
    w, h = image.size
    scale = shorter / min(w, h)
    new_size = (shorter, round(h * scale)) if w <= h else (round(w * scale), shorter)
    if new_size != image.size:
        image = image.resize(new_size, Image.BILINEAR)
    # Halves round up, as DALI's centered crop does.
    left, top = (new_size[0] - size + 1) // 2, (new_size[1] - size + 1) // 2
    return image.crop((left, top, left + size, top + size))


class _Images(Dataset):
    """This process's images for one epoch, in `plan.order()`, as uint8 HWC tensors."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.order = plan.order()

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int]:
        plan, i = self.plan, int(self.order[position])
        image = plan.images.decode(i)
        if plan.train:
            rng = np.random.default_rng([plan.seed, plan.epoch, i])
            image = train_transform(image, plan.image_size, plan.cfg, rng)
        else:
            image = eval_transform(image, plan.image_size, plan.cfg.crop_fraction)
        return torch.from_numpy(np.asarray(image).copy()), int(plan.images.labels[i])


class _Normalize:
    """Collate uint8 HWC images into a normalized float32 NCHW batch, in the worker, one vectorized op per batch."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.mean = torch.tensor(mean).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std).view(1, 3, 1, 1) * 255

    def __call__(self, samples: list[tuple[torch.Tensor, int]]) -> Batch:
        images = torch.stack([image for image, _ in samples]).permute(0, 3, 1, 2).float()
        labels = torch.tensor([label for _, label in samples], dtype=torch.long)
        return ((images - self.mean) / self.std).contiguous(), labels
