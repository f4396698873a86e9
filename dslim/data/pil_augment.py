"""The post-crop augmentations of `dslim.data.augment` applied with PIL and numpy (the PIL pipeline).

RandAugment's ops are PIL's own (`ImageOps`, `ImageEnhance`, an affine `transform`), as timm applies them; the colour
map and erasing are numpy. `dslim.data.dali_augment` applies the same draws with DALI operators.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from dslim.config import DataConfig
from dslim.data.augment import BICUBIC, BILINEAR, LUMA, NO_OP, OPS, Draws

RESAMPLE = {BILINEAR: Image.BILINEAR, BICUBIC: Image.BICUBIC}
ENHANCE = {"color": ImageEnhance.Color, "contrast": ImageEnhance.Contrast, "brightness": ImageEnhance.Brightness,
           "sharpness": ImageEnhance.Sharpness}  # fmt: skip


def fill_colour(cfg: DataConfig) -> tuple[int, ...]:
    """What geometric ops fill uncovered pixels with: the normalization mean, in 0-255 (timm's `img_mean`)."""
    return tuple(min(255, round(255 * m)) for m in cfg.mean)


def randaugment(image: Image.Image, draws: Draws, i: int, cfg: DataConfig) -> Image.Image:
    """Image `i`'s RandAugment ops, one after the other, each on the uint8 result of the last."""
    for op, level, affine in zip(draws.op[i], draws.level[i], draws.affine[i]):
        if op != NO_OP:
            image = _op(image, OPS[op], float(level), affine, fill_colour(cfg))
    return image


def _op(image: Image.Image, name: str, level: float, affine: np.ndarray, fill: tuple[int, ...]) -> Image.Image:
    if name in ENHANCE:
        return ENHANCE[name](image).enhance(level)
    if name == "auto_contrast":
        return ImageOps.autocontrast(image)
    if name == "equalize":
        return Image.fromarray(equalize(np.asarray(image)))
    if name == "invert":
        return ImageOps.invert(image)
    if name == "posterize":
        return image.point([i & int(level) for i in range(256)] * 3)
    if name == "solarize":
        return ImageOps.solarize(image, int(level))
    if name == "solarize_add":
        return image.point([min(255, i + int(level)) if i < 128 else i for i in range(256)] * 3)
    # Geometric: PIL's affine transform maps output pixel centres to input coordinates, as the draw gives them.
    return image.transform(image.size, Image.AFFINE, tuple(affine.ravel()), Image.BILINEAR, fillcolor=fill)


def equalize(pixels: np.ndarray) -> np.ndarray:
    """Histogram equalization of each channel by OpenCV's lookup table, as DALI's `equalize` computes it (PIL's
    counts each level's pixels from the level above: up to a histogram bin brighter)."""
    out = np.empty_like(pixels)
    for c in range(pixels.shape[-1]):
        channel = pixels[..., c]
        cdf = np.bincount(channel.ravel(), minlength=256).cumsum()
        lowest = cdf[cdf > 0][0]
        spread = cdf[-1] - lowest
        lut = np.arange(256) if spread == 0 else np.rint((cdf - lowest) * 255.0 / spread)
        out[..., c] = np.clip(lut, 0, 255).astype(np.uint8)[channel]
    return out


def colour(pixels: np.ndarray, draws: Draws, i: int) -> np.ndarray:
    """Image `i`'s colour map `M x + k m + t` on uint8 HWC pixels, rounded and clipped once."""
    x = pixels.astype(np.float32)
    mean_luma = float((x @ LUMA.astype(np.float32)).mean())
    out = x @ draws.color[i].T + draws.color_mean[i] * mean_luma + draws.color_shift[i]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def erase(image: np.ndarray, boxes: np.ndarray, mode: str, rng: np.random.Generator) -> np.ndarray:
    """Erase `boxes` (top, left, height, width) of a normalized CHW float image in place, timm's way: per-pixel
    standard normal noise (`pixel`), one normal value per channel (`rand`) or zeros (`const`)."""
    channels = image.shape[0]
    for top, left, h, w in boxes:
        if h == 0:
            continue
        if mode == "pixel":
            patch = rng.standard_normal((channels, h, w))
        elif mode == "rand":
            patch = rng.standard_normal((channels, 1, 1))
        else:
            patch = np.zeros((channels, 1, 1))
        image[:, top : top + h, left : left + w] = patch
    return image
