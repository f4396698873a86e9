"""The input convention weights were trained with, recorded in every artifact: normalization, size, evaluation crop.

Weights only work on inputs prepared as in their training: BlockDrop's released CIFAR ResNet-110 read raw [0, 1]
pixels, its ResNet-32 normalized ones, DS-Net's evaluation resized bicubically. Every artifact dslim writes (a
stage's supernet, an exported model, an imported checkpoint, and the card beside an ONNX file) records it under
`preprocessing`; evaluation and export of an artifact use it, `load_subnet` hands it to the user
(`model.preprocessing`), and a run refuses to start from an artifact recorded with another normalization than its
own `--data.mean` / `--data.std`.
"""

from __future__ import annotations

import dataclasses
import math
import os

from dslim.config import Config, DataConfig
from dslim.errors import UserError

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
RAW = {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}
"""Pixels in [0, 1] as they are (what BlockDrop's CIFAR ResNet-110 read)."""


def record(data: DataConfig, input_size: int) -> dict:
    """What an artifact of a run with these data settings records."""
    return convention(list(data.mean), list(data.std), input_size, data.crop_fraction, data.eval_interpolation)


def convention(mean: list[float], std: list[float], input_size: int, crop_fraction: float = 0.875,
               interpolation: str = "bilinear") -> dict:  # fmt: skip
    """`preprocessing` metadata: `x = (pixel / 255 - mean) / std`, channels RGB, NCHW; evaluation resizes the
    shorter side to `resize_shorter_side` (`interpolation`) and center-crops `input_size`."""
    return {"mean": [float(m) for m in mean], "std": [float(s) for s in std], "input_size": int(input_size),
            "crop_fraction": float(crop_fraction), "resize_shorter_side": int(input_size / crop_fraction + 1e-6),
            "interpolation": interpolation, "layout": "NCHW, RGB in [0, 1]"}  # fmt: skip


def read(meta: dict, path: str | os.PathLike) -> dict | None:
    """An artifact's recorded convention, checked; None if it records none (written before dslim recorded it)."""
    found = meta.get("preprocessing")
    if found is None:
        return None
    try:
        mean, std = [float(v) for v in found["mean"]], [float(v) for v in found["std"]]
        size, fraction = int(found["input_size"]), float(found["crop_fraction"])
        interpolation = str(found.get("interpolation", "bilinear"))
        ok = len(mean) == len(std) == 3 and all(math.isfinite(v) for v in mean) and all(s > 0 for s in std)
        ok = ok and 8 <= size <= 4096 and 0 < fraction <= 1 and interpolation in ("bilinear", "bicubic")
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise UserError(f"{path}: metadata 'preprocessing' is not a valid input convention: {found!r}")
    return convention(mean, std, size, fraction, interpolation)


def adopt(config: Config, recorded: dict | None) -> Config:
    """`config` evaluating with the recorded convention (normalization, crop, interpolation), if there is one."""
    if recorded is None:
        return config
    mean, std = tuple(recorded["mean"]), tuple(recorded["std"])
    fraction, resample = recorded["crop_fraction"], recorded["interpolation"]
    data = dataclasses.replace(config.data, mean=mean, std=std, crop_fraction=fraction, eval_interpolation=resample)
    return dataclasses.replace(config, data=data)


def check_matches(recorded: dict | None, data: DataConfig, path: str | os.PathLike) -> None:
    """A run starting from an artifact must normalize its inputs as the artifact's weights were trained."""
    if recorded is None:
        return
    want, have = (recorded["mean"], recorded["std"]), (list(data.mean), list(data.std))
    if not all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9) for x, y in zip(want, have) for a, b in zip(x, y)):
        mean, std = (" ".join(f"{v:g}" for v in values) for values in want)
        raise UserError(f"{path} was trained on inputs normalized with mean {mean}, std {std}; this run normalizes "
                        f"otherwise: pass --data.mean {mean} --data.std {std}")  # fmt: skip
