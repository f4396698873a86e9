"""The post-crop augmentations of `dslim.data.augment` as DALI operators (the DALI pipeline).

The draws enter the pipeline through an `external_source` (`source`); RandAugment routes each image to its op with
DALI's conditionals (the pipeline is built with `enable_conditionals`), splitting the batch in halves by op index.
Each op reproduces its PIL counterpart in `dslim.data.pil_augment` up to rounding, but at the image border: DALI's
sharpening filter also changes the 1-pixel border that PIL leaves alone, and its warps blend the fill colour into
the edge pixels that PIL fills outright.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from nvidia.dali import fn, types
from nvidia.dali import math as dmath
from nvidia.dali.data_node import DataNode
from nvidia.dali.pipeline import do_not_convert

from dslim.config import DataConfig
from dslim.data.augment import BICUBIC, GEOMETRIC, LUMA, NO_OP, OPS, draw, draws_interpolation, image_rng, needs_colour

SMOOTH = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / 13  # PIL's `ImageFilter.SMOOTH`
IDENTITY = np.zeros((3, 3), np.float32)
IDENTITY[1, 1] = 1.0
WARP = len(OPS) - len(GEOMETRIC)
"""The index of the first geometric op: from there on, every op is a warp."""


@do_not_convert  # a generator: nothing for the conditionals' converter to do
def source(cfg: DataConfig, size: int, keys: Iterator[list[tuple[int, ...]]], seed: int, epoch: int) -> dict:
    """The draws of each batch that `cfg` uses, as named `external_source` outputs; `keys` gives each batch's image
    keys."""
    names = ["interpolation"] if draws_interpolation(cfg) else []
    if cfg.randaugment.layers:
        names += ["op", "level", "affine"]
    if needs_colour(cfg):
        names += ["color", "color_mean", "color_shift"]
    if cfg.erasing.prob > 0:
        names.append("erase")

    def batches() -> Iterator[list[list[np.ndarray]]]:
        for batch in keys:
            d = draw(cfg, size, [image_rng(seed, epoch, key) for key in batch])
            yield [list(getattr(d, name)) for name in names]

    return dict(zip(names, fn.external_source(source=batches(), num_outputs=len(names), batch=True)))


def interpolation(draws: dict | None) -> DataNode | types.DALIInterpType:
    """Per-image resampling of the crop, as DALI's `interp_type` (bilinear unless drawn)."""
    if draws is None or "interpolation" not in draws:
        return types.INTERP_LINEAR
    cubic = fn.cast(draws["interpolation"] == BICUBIC, dtype=types.INT32)
    code = int(types.INTERP_LINEAR) + cubic * (int(types.INTERP_CUBIC) - int(types.INTERP_LINEAR))
    return fn.cast(code, dtype=types.DALIDataType.INTERP_TYPE)


def randaugment(images: DataNode, draws: dict, layers: int, cfg: DataConfig) -> DataNode:
    """Each image's RandAugment ops in turn on uint8 HWC images (needs `enable_conditionals`)."""
    fill = np.array([min(255, round(255 * m)) for m in cfg.mean], np.float32)
    for slot in range(layers):
        branch = dmath.min(draws["op"][slot], WARP)  # every geometric op is a warp by its drawn matrix
        images = _route(images, branch, draws["level"][slot], draws["affine"][slot], fill, NO_OP, WARP)
    return images


def _route(images: DataNode, branch: DataNode, level: DataNode, affine: DataNode, fill: np.ndarray, low: int,
           high: int) -> DataNode:  # fmt: skip
    """Apply op `branch` of `low..high`, halving the range by conditional splits of the batch."""
    if low == high:
        return _op(images, low, level, affine, fill)
    mid = (low + high) // 2
    if branch <= mid:
        out = _route(images, branch, level, affine, fill, low, mid)
    else:
        out = _route(images, branch, level, affine, fill, mid + 1, high)
    return out


def _op(images: DataNode, index: int, level: DataNode, affine: DataNode, fill: np.ndarray) -> DataNode:
    if index == NO_OP:
        return images
    name = OPS[index]
    x = fn.cast(images, dtype=types.FLOAT)
    kernel = level * IDENTITY + (1.0 - level) * SMOOTH if name == "sharpness" else None
    level = _beside(level, x)
    if index == WARP:  # filled with the normalization mean: warp the difference from it, filled with 0
        out = fn.warp_affine(x - fill, matrix=affine, fill_value=0.0, interp_type=types.INTERP_LINEAR) + fill
    elif name == "auto_contrast":
        low = fn.reductions.min(x, axis_names="HW", keep_dims=True)
        high = fn.reductions.max(x, axis_names="HW", keep_dims=True)
        spread = fn.cast(high > low, dtype=types.FLOAT)
        stretched = dmath.floor((x - low) * 255.0 / (high - low + 1.0 - spread))
        out = spread * stretched + (1.0 - spread) * x
    elif name == "equalize":
        return fn.equalize(images)
    elif name == "invert":
        out = 255.0 - x
    elif name == "posterize":
        out = fn.cast(fn.cast(x, dtype=types.INT32) & fn.cast(level, dtype=types.INT32), dtype=types.FLOAT)
    elif name == "solarize":
        below = fn.cast(x < level, dtype=types.FLOAT)
        out = below * x + (1.0 - below) * (255.0 - x)
    elif name == "solarize_add":
        below = fn.cast(x < 128.0, dtype=types.FLOAT)
        out = below * dmath.min(x + level, 255.0) + (1.0 - below) * x
    elif name == "sharpness":  # blend with PIL's smoothing filter: one filter of the blended kernel
        out = fn.filter(x, kernel, border="clamp")
    else:
        centre = 0.0 if name == "brightness" else _luma(x)
        if name == "contrast":
            centre = dmath.floor(fn.reductions.mean(centre, axes=[0, 1, 2], keep_dims=True) + 0.5)
        out = dmath.floor(centre + level * (x - centre))  # PIL's blend truncates
    return fn.cast(dmath.clamp(dmath.floor(out + 0.5), 0.0, 255.0), dtype=types.UINT8)


def _beside(parameter: DataNode, images: DataNode) -> DataNode:
    """A drawn (CPU) parameter where arithmetic with `images` can use it: on the GPU with GPU-decoded images."""
    return parameter.gpu() if images.device == "gpu" else parameter


def _luma(x: DataNode) -> DataNode:
    """(H, W, 1) luma of float HWC images (arithmetic: constant tensors cannot enter a conditional branch)."""
    return sum(float(w) * x[:, :, c : c + 1] for c, w in enumerate(LUMA))


def colour(images: DataNode, draws: dict) -> DataNode:
    """The colour map `M x + k m + t` (m: the image's mean luma), rounded and clipped once; uint8 HWC."""
    x = fn.cast(images, dtype=types.FLOAT)
    mean_luma = fn.reductions.mean(_luma(x), axes=[0, 1, 2], keep_dims=True)
    weight = _beside(fn.reshape(draws["color_mean"], shape=[1, 1, 3]), x)
    out = fn.coord_transform(x, M=draws["color"], T=draws["color_shift"]) + mean_luma * weight
    return fn.cast(dmath.clamp(dmath.floor(out + 0.5), 0.0, 255.0), dtype=types.UINT8)


def erase(images: DataNode, draws: dict, count: int, mode: str) -> DataNode:
    """The drawn rectangles of normalized CHW images replaced by noise (`pixel`, `rand`) or zeros (`const`)."""
    boxes = fn.cast(draws["erase"], dtype=types.FLOAT)
    kept = images * 0.0 + 1.0
    for i in range(count):
        kept = fn.erase(kept, anchor=boxes[i, 0:2], shape=boxes[i, 2:4], axis_names="HW", fill_value=0.0)
    if mode == "pixel":
        noise = fn.random.normal(images)
    elif mode == "rand":
        noise = _beside(fn.random.normal(shape=[3, 1, 1]), images)
    else:
        noise = 0.0
    return images * kept + noise * (1.0 - kept)
