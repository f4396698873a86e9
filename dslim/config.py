"""Typed run configuration: frozen dataclasses that tyro turns into the command line.

A run is a recipe (a `Config` built in Python) plus command-line overrides. Every field has a docstring
because tyro shows it in `--help`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

BnMode = Literal["private", "switchable", "calibrated"]


@dataclass(frozen=True)
class ModelConfig:
    """Which supernet to build and which of its subnets are named."""

    arch: str = "mobilenet_v1"
    """Supernet architecture (see `dslim.models.names()`)."""
    num_classes: int = 1000
    """Classifier outputs."""
    input_size: int = 224
    """Square input resolution used for profiling and training crops."""
    max_width: float = 1.0
    """Width multiplier of the supernet itself (1.5 for AutoSlim/DMCP MobileNetV2). Width-multiplier models only."""
    widths: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    """Named widths (width-multiplier models): the subnets trained by S-Net, evaluated and profiled by default."""
    width_range: tuple[float, float] | None = None
    """Universally slimmable range [min, max]: any width inside may be profiled, calibrated and evaluated."""
    bn: BnMode = "switchable"
    """BatchNorm: `private` (shared affine, statistics per subnet), `switchable` (affine and statistics per
    subnet), `calibrated` (shared affine, statistics computed after training for any subnet)."""
    dropout: float = 0.0
    """Dropout before the classifier."""


@dataclass(frozen=True)
class DataConfig:
    """Where images come from and how they are decoded and augmented."""

    root: str = "digits"
    """Dataset root with `train/<class>/*` and `val/<class>/*` (ImageFolder), a folder of WebDataset shards
    `train-*.tar` / `val-*.tar`, or `digits` for the built-in handwritten digits."""
    format: Literal["folder", "webdataset"] = "folder"
    """Layout of `root`."""
    loader: Literal["dali", "pil"] = "dali"
    """`dali`: NVIDIA DALI pipelines; `pil`: PIL + torch DataLoader fallback with the same transforms."""
    decoder: Literal["cpu", "mixed"] = "cpu"
    """DALI decoder device: `mixed` decodes on the GPU (needs CUDA), `cpu` anywhere."""
    batch_size: int = 64
    """Images per process per step (training)."""
    eval_batch_size: int = 100
    """Images per process per step (evaluation)."""
    workers: int = 2
    """DALI threads / DataLoader workers per process."""
    random_area: tuple[float, float] = (0.08, 1.0)
    """RandomResizedCrop area range."""
    random_aspect_ratio: tuple[float, float] = (0.75, 4.0 / 3.0)
    """RandomResizedCrop aspect-ratio range."""
    flip: bool = True
    """Random horizontal flip in training (off for digits, whose mirror images are other shapes)."""
    crop_fraction: float = 0.875
    """Evaluation: resize the shorter side to `input_size / crop_fraction`, then center-crop `input_size`."""
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    """Per-channel mean (of pixel values in [0, 1])."""
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    """Per-channel standard deviation (of pixel values in [0, 1])."""
    cache_dir: str = "~/.cache/dslim"
    """Where the built-in digits are written as PNG files once."""


@dataclass(frozen=True)
class Config:
    """A whole run: model, data and (later) the training stages."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    seed: int = 0
    """Random seed (every process draws the same subnets)."""


def replace(obj, **changes):  # type: ignore[no-untyped-def]
    """`dataclasses.replace` that accepts dotted paths: `replace(cfg, **{"model.arch": "resnet50"})`."""
    nested: dict[str, dict[str, object]] = {}
    flat: dict[str, object] = {}
    for key, value in changes.items():
        head, _, rest = key.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            flat[head] = value
    for head, sub in nested.items():
        flat[head] = replace(flat.get(head, getattr(obj, head)), **sub)
    return dataclasses.replace(obj, **flat)
