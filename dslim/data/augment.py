"""The random parameters of the training augmentations that follow the crop, drawn once for both pipelines.

What the originals apply after their random crop (timm's RandAugment and random erasing for DS-Net; torchvision's
colour jitter and AlexNet's lighting noise for the slimmable networks and DMCP; a random resize interpolation) is
drawn here, per image, with numpy, from `(seed, epoch, image)`. `dslim.data.pil_augment` and
`dslim.data.dali_augment` only apply what was drawn, so the PIL and DALI pipelines give the same distribution of
outputs by construction; given the same images, they even apply the same parameters to each.

The draws follow the originals: RandAugment and erasing as timm 0.3.2 (`timm/data/auto_augment.py`,
`timm/data/random_erasing.py`), colour jitter as torchvision's `ColorJitter`. The colour ops, which all commute
before clipping, become one affine map of the colours per image: `out = M x + k m + t`, where `m` is the image's
mean luma (contrast blends with it), so each pipeline clips once instead of after each op.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dslim.config import DataConfig

# RandAugment's 15 ops (timm's `_RAND_TRANSFORMS`), the geometric ones last: the index is what the pipelines switch
# on, and DALI applies every geometric op as one warp by its drawn matrix.
OPS = ("auto_contrast", "equalize", "invert", "posterize", "solarize", "solarize_add", "color", "contrast",
       "brightness", "sharpness", "rotate", "shear_x", "shear_y", "translate_x", "translate_y")  # fmt: skip
GEOMETRIC = frozenset(OPS[10:])
NO_OP = -1
BILINEAR, BICUBIC = 0, 1
MAX_LEVEL = 10.0

LUMA = np.array([0.299, 0.587, 0.114])
# RGB -> YIQ (rows Y, I, Q); I and Q sum to 0, so a grey pixel has no chroma and YIQ -> RGB maps (Y, 0, 0) to Y.
YIQ = np.array([LUMA, [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
RGB = np.linalg.inv(YIQ)
# AlexNet's PCA of ImageNet pixel colours (values in [0, 1]), as fb.resnet.torch and the slimmable networks use them.
PCA_EIGVAL = np.array([0.2175, 0.0188, 0.0045])
PCA_EIGVEC = np.array([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]])

AUGMENT_STREAM = 0xA06
"""Last seed word of the per-image generator, so these draws never coincide with the crop's."""


@dataclass(frozen=True)
class Draws:
    """Parameters for a batch of `n` training images of side `size`."""

    interpolation: np.ndarray
    """(n,) int32: resampling of the crop, `BILINEAR` or `BICUBIC`."""
    op: np.ndarray
    """(n, layers) int32: RandAugment op of each slot (index into `OPS`), `NO_OP` where none is applied."""
    level: np.ndarray
    """(n, layers) float32: the argument of a non-geometric op (posterize: the bit mask kept; solarize: the
    threshold; solarize-add: the value added; colour, contrast, brightness, sharpness: the enhance factor)."""
    affine: np.ndarray
    """(n, layers, 2, 3) float32: for geometric ops, the map from output to input pixel coordinates (pixel
    centres at +0.5, as PIL and DALI's `warp_affine` take it); identity otherwise. Always resampled bilinearly:
    DALI's warps have no bicubic mode (timm's `random` also picked bicubic for them)."""
    color: np.ndarray
    """(n, 3, 3) float32: `M` of the colour map (identity: no colour change)."""
    color_mean: np.ndarray
    """(n, 3) float32: `k`, the weight of the image's mean luma in each output channel."""
    color_shift: np.ndarray
    """(n, 3) float32: `t`, added to each channel (0-255 scale): lighting noise."""
    erase: np.ndarray
    """(n, count, 4) int32: (top, left, height, width) of each erased rectangle; height 0: none."""


def needs_colour(cfg: DataConfig) -> bool:
    return any(cfg.color_jitter) or cfg.lighting > 0


def draws_interpolation(cfg: DataConfig) -> bool:
    """Whether the crop resamples with a drawn interpolation (a pad crop does not resample)."""
    return cfg.interpolation != "bilinear" and cfg.augment != "pad_crop"


def any_drawn(cfg: DataConfig) -> bool:
    """Whether training draws anything here (otherwise the pipelines skip this module altogether)."""
    return draws_interpolation(cfg) or cfg.randaugment.layers > 0 or needs_colour(cfg) or cfg.erasing.prob > 0


def draw(cfg: DataConfig, size: int, rngs: list[np.random.Generator]) -> Draws:
    """One image's parameters from each generator (training images of `size` x `size`)."""
    per_image = [_one(cfg, size, rng) for rng in rngs]
    return Draws(*(np.stack(column) for column in zip(*per_image)))


def image_rng(seed: int, epoch: int, key: int | tuple[int, ...]) -> np.random.Generator:
    """The generator of one image's draws: `key` is its index in the split (or, where a reader shuffles by itself,
    its shard, batch and position)."""
    key = key if isinstance(key, tuple) else (key,)
    return np.random.default_rng([seed, epoch, *key, AUGMENT_STREAM])


def _one(cfg: DataConfig, size: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    interpolation = _interpolation(cfg, rng)
    op, level, affine = _randaugment(cfg, size, rng)
    color, mean, shift = _colour(cfg, rng)
    return (np.int32(interpolation), op, level, affine, color, mean, shift, _erase(cfg, size, rng))


def interpolation_code(name: str) -> int:
    return BICUBIC if name == "bicubic" else BILINEAR


def _interpolation(cfg: DataConfig, rng: np.random.Generator) -> int:
    if cfg.interpolation == "random":
        return int(rng.integers(2))
    return interpolation_code(cfg.interpolation)


def _randaugment(cfg: DataConfig, size: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    ra = cfg.randaugment
    op = np.full(ra.layers, NO_OP, np.int32)
    level = np.zeros(ra.layers, np.float32)
    affine = np.tile(np.eye(2, 3, dtype=np.float32), (ra.layers, 1, 1))
    for slot in range(ra.layers):
        k = int(rng.integers(len(OPS)))
        if rng.random() > ra.prob:
            continue
        magnitude = min(MAX_LEVEL, max(0.0, rng.normal(ra.magnitude, ra.magnitude_std)))
        sign = -1.0 if rng.random() > 0.5 else 1.0
        op[slot] = k
        name = OPS[k]
        if name in GEOMETRIC:
            affine[slot] = _geometric(name, magnitude * sign / MAX_LEVEL, size)
        else:
            level[slot] = _level(name, magnitude)
    return op, level, affine


def _level(name: str, magnitude: float) -> float:
    """timm 0.3.2's level-to-argument of the non-geometric ops (the enhance ops are not negated there)."""
    fraction = magnitude / MAX_LEVEL
    if name == "posterize":
        return 256 - 2 ** (8 - int(fraction * 4))  # the mask of the int(4 f) high bits kept (0 bits: black)
    if name == "solarize":
        return int(fraction * 256)  # threshold
    if name == "solarize_add":
        return int(fraction * 110)
    if name in ("color", "contrast", "brightness", "sharpness"):
        return fraction * 1.8 + 0.1  # enhance factor
    return 0.0


def _geometric(name: str, signed: float, size: int) -> np.ndarray:
    """Output -> input map of a geometric op at signed magnitude `signed` (in [-1, 1]) on a `size` square."""
    if name == "rotate":
        # PIL's `rotate(degrees)`: counter-clockwise on screen, about the image centre.
        angle = math.radians(signed * 30.0)
        c, s = math.cos(angle), math.sin(angle)
        centre = size / 2.0
        return np.array([[c, -s, centre - c * centre + s * centre], [s, c, centre - s * centre - c * centre]],
                        np.float32)  # fmt: skip
    if name == "shear_x":
        return np.array([[1, signed * 0.3, 0], [0, 1, 0]], np.float32)
    if name == "shear_y":
        return np.array([[1, 0, 0], [signed * 0.3, 1, 0]], np.float32)
    shift = signed * 0.45 * size
    if name == "translate_x":
        return np.array([[1, 0, shift], [0, 1, 0]], np.float32)
    return np.array([[1, 0, 0], [0, 1, shift]], np.float32)


def _colour(cfg: DataConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(M, k, t)` of `out = M x + k m + t` for torchvision's jitter draws followed by AlexNet's lighting.

    In YIQ, brightness b scales everything, contrast c pulls luma towards the mean luma m (`m + c (Y - m)`) and
    scales chroma, saturation s scales chroma, hue h rotates chroma by 2 pi h."""
    brightness, contrast, saturation, hue = cfg.color_jitter
    b, c, s = (rng.uniform(max(0.0, 1 - v), 1 + v) if v else 1.0 for v in (brightness, contrast, saturation))
    turn = 2 * math.pi * rng.uniform(-hue, hue) if hue else 0.0
    cos, sin = c * s * math.cos(turn), c * s * math.sin(turn)
    in_yiq = np.array([[c, 0, 0], [0, cos, -sin], [0, sin, cos]])
    matrix = b * RGB @ in_yiq @ YIQ
    mean_weight = np.full(3, b * (1 - c))
    shift = np.zeros(3)
    if cfg.lighting > 0:
        alpha = rng.normal(0.0, cfg.lighting, 3)
        shift = 255.0 * PCA_EIGVEC @ (alpha * PCA_EIGVAL)
    return matrix.astype(np.float32), mean_weight.astype(np.float32), shift.astype(np.float32)


def _erase(cfg: DataConfig, size: int, rng: np.random.Generator) -> np.ndarray:
    """timm's `RandomErasing._erase` boxes: up to ten attempts per rectangle to fit one strictly inside."""
    er = cfg.erasing
    boxes = np.zeros((er.count, 4), np.int32)
    if er.prob == 0 or rng.random() > er.prob:
        return boxes
    log_aspect = (math.log(er.min_aspect), math.log(1 / er.min_aspect))
    for i in range(er.count):
        for _ in range(10):
            area = rng.uniform(*er.area) * size * size / er.count
            aspect = math.exp(rng.uniform(*log_aspect))
            h, w = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if w < size and h < size:
                boxes[i] = (rng.integers(0, size - h + 1), rng.integers(0, size - w + 1), h, w)
                break
    return boxes
