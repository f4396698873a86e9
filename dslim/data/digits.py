"""The built-in data set: scikit-learn's handwritten digits, written once as an ImageFolder of PNG files.

The 1797 8x8 images ship with scikit-learn (no download); `dslim.data.cache` says why they become PNG files.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from dslim.data.cache import written_once

NAME = "digits-v1"
"""Folder name inside the cache; bump the version whenever the written images change."""
SIZE = 32
"""Side of the written images: large enough for RandomResizedCrop and a stride-32 network."""
VAL_FRACTION = 0.2
SPLIT_SEED = 0


def split_digits() -> dict[str, np.ndarray]:
    """Indices into `sklearn.datasets.load_digits()` of each split: a fixed, seeded, stratified 80/20 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    target = load_digits().target
    train, val = train_test_split(
        np.arange(len(target)), test_size=VAL_FRACTION, stratify=target, random_state=SPLIT_SEED
    )
    return {"train": np.sort(train), "val": np.sort(val)}


def digits_root(cache_dir: str | os.PathLike[str]) -> Path:
    """The digits ImageFolder `<cache_dir>/digits-v1/{train,val}/<class>/<index>.png`, written on first use."""
    return written_once(cache_dir, NAME, _write)


def _write(folder: Path) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Pixel values are ink intensities 0..16; spread them over 0..255 (white ink on black).
    pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)
    for split, indices in split_digits().items():
        for i in indices:
            class_dir = folder / split / str(digits.target[i])
            class_dir.mkdir(parents=True, exist_ok=True)
            # Bilinear rather than nearest: smooth strokes instead of 4x4 blocks, so the later random crops and
            # resizes (non-integer factors) do not alias hard block edges; the 4-bit originals hold no finer detail.
            image = Image.fromarray(pixels[i]).resize((SIZE, SIZE), Image.BILINEAR)
            image.convert("RGB").save(class_dir / f"{i:04d}.png")
