"""`digits-hard`, the harder built-in data set: each scikit-learn digit redrawn on a 32x32 canvas at a drawn
difficulty, so that capacity matters and some images need a wider network than others.

Every image gets a difficulty `d`, uniform in [0, 1], which sets all of its distortions at once:
- scale: the digit's side shrinks from 26 px (d = 0) to 14 px (d = 1);
- position: it moves off centre by up to `d` times the free margin;
- contrast: its ink dims to `1 - 0.3 d`;
- clutter: `round(4 d)` fainter fragments of other digits of the same split lie under it;
- occlusion: with probability `d`, a bar of background hides `0.25 d` of its side;
- noise: Gaussian pixel noise of standard deviation `0.1 d` (of the ink range).
Easy images look like `digits`; hard ones are small, faint, partly hidden digits among strokes of others.

Each source digit gives `VARIANTS[split]` images of independent difficulties; fragments come only from digits of
the same split, so no stroke of a validation digit is trained on. `difficulty.json` at the root records each
image's difficulty by its path under the root (`"val/3/0012-1.png": 0.73`). Every image is drawn by its own seeded
generator: the same files, byte for byte, on every machine with the same numpy and Pillow.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from dslim.data.cache import written_once
from dslim.data.digits import split_digits

NAME = "digits-hard-v1"
"""Folder name inside the cache; bump the version whenever the written images change."""
SIZE = 32
VARIANTS = {"train": 2, "val": 3}
"""Images per source digit: more validation images than `digits` has, so that a point of accuracy is measurable."""
SEED = 0
DIFFICULTY_FILE = "difficulty.json"
READ_SETTINGS = {"data.root": "digits-hard", "data.augment": "pad_crop", "data.pad": 2, "data.crop_fraction": 1.0}
"""How the `*_hard` recipes read it: the digit may sit near an edge, so crops shift by 2 pixels at most (a random
resized crop could cut it off) and evaluation sees the whole image."""


def digits_hard_root(cache_dir: str | os.PathLike[str]) -> Path:
    """The ImageFolder `<cache_dir>/digits-hard-v1/{train,val}/<class>/<index>-<variant>.png` plus
    `difficulty.json`, written on first use."""
    return written_once(cache_dir, NAME, _write)


def difficulties(root: str | os.PathLike[str]) -> dict[str, float]:
    """Each image's difficulty by its path under `root` (`"train/7/0042-0.png"`)."""
    return json.loads((Path(root) / DIFFICULTY_FILE).read_text())


def render(digit: np.ndarray, pool: np.ndarray, d: float, rng: np.random.Generator) -> np.ndarray:
    """One `SIZE` x `SIZE` uint8 image of `digit` (ink in [0, 1], 8x8) at difficulty `d`, its clutter cut from
    `pool` (N x 8 x 8)."""
    canvas = np.zeros((SIZE, SIZE), dtype=np.float32)
    side = round(26 - 12 * d)
    for _ in range(round(4 * d)):
        other = pool[rng.integers(len(pool))]
        k = int(rng.integers(3, 6))
        y, x = rng.integers(0, 9 - k, size=2)
        fragment = _scaled(other[y : y + k, x : x + k], max(2, round(k * side / 8))) * rng.uniform(0.25, 0.5)
        _paste(canvas, fragment, *rng.integers(0, SIZE - len(fragment) + 1, size=2))
    margin = (SIZE - side) / 2
    top, left = (round(margin + d * margin * rng.uniform(-1, 1)) for _ in range(2))
    _paste(canvas, _scaled(digit, side) * (1 - 0.3 * d), top, left)
    if rng.random() < d:
        width = max(1, round(0.25 * d * side))
        start = int(rng.integers(0, side - width + 1))
        if rng.random() < 0.5:
            canvas[top + start : top + start + width, left : left + side] = 0
        else:
            canvas[top : top + side, left + start : left + start + width] = 0
    canvas += rng.normal(0, 0.1 * d, canvas.shape).astype(np.float32)
    return np.round(np.clip(canvas, 0, 1) * 255).astype(np.uint8)


def _scaled(ink: np.ndarray, side: int) -> np.ndarray:
    """Bilinear, as `digits` is scaled: smooth strokes, no 4x4 blocks."""
    return np.asarray(Image.fromarray(ink.astype(np.float32)).resize((side, side), Image.BILINEAR))


def _paste(canvas: np.ndarray, patch: np.ndarray, top: int, left: int) -> None:
    """Ink over ink: the brighter wins, as strokes drawn on top of each other."""
    region = canvas[top : top + len(patch), left : left + len(patch)]
    np.maximum(region, patch, out=region)


def _write(folder: Path) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    ink = digits.images / 16.0
    record: dict[str, float] = {}
    for split, indices in split_digits().items():
        for i in indices:
            for v in range(VARIANTS[split]):
                rng = np.random.default_rng([SEED, int(i), v])
                d = float(rng.random())
                name = f"{split}/{digits.target[i]}/{i:04d}-{v}.png"
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(render(ink[i], ink[indices], d, rng)).convert("RGB").save(folder / name)
                record[name] = round(d, 4)
    (folder / DIFFICULTY_FILE).write_text(json.dumps(record, indent=0, sort_keys=True) + "\n")
