"""The harder built-in data set `digits-hard`: byte-for-byte determinism, disjoint splits, a difficulty that makes
images harder, and the same images through DALI and PIL."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dslim.config import DataConfig
from dslim.data import build_loader, dataset_classes
from dslim.data import digits_hard as hard
from dslim.data.digits import split_digits

BACKENDS = ["dali", "pil"]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return hard.digits_hard_root(tmp_path_factory.mktemp("cache"))


def config(root: Path, **changes: object) -> DataConfig:
    # crop_fraction 1: the evaluation crop is the whole 32x32 image, nothing is resampled.
    base = DataConfig(root="digits-hard", cache_dir=str(root.parent), eval_batch_size=100, crop_fraction=1.0)
    return dataclasses.replace(base, **changes)


def source(name: str) -> int:
    """The index into scikit-learn's digits an image was drawn from (`val/3/0012-1.png` -> 12)."""
    return int(Path(name).stem.split("-")[0])


def test_the_same_bytes_every_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Two writes of a small part (20 source digits per split) into different caches: identical files.
    small = {split: indices[:20] for split, indices in split_digits().items()}
    monkeypatch.setattr(hard, "split_digits", lambda: small)
    first, second = (hard.digits_hard_root(tmp_path / c) for c in "ab")
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert len(files) == 20 * (hard.VARIANTS["train"] + hard.VARIANTS["val"]) + 1
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in files)


def test_splits_are_disjoint_and_every_image_has_a_difficulty(root: Path) -> None:
    difficulty = hard.difficulties(root)
    names = {
        split: sorted(str(p.relative_to(root)) for p in (root / split).glob("*/*.png")) for split in ("train", "val")
    }
    assert sorted(difficulty) == sorted(names["train"] + names["val"])
    split = split_digits()
    for name in ("train", "val"):
        sources = [source(n) for n in names[name]]
        assert sorted(set(sources)) == split[name].tolist()
        assert len(sources) == hard.VARIANTS[name] * len(split[name])
    assert not {source(n) for n in names["train"]} & {source(n) for n in names["val"]}
    values = np.array(list(difficulty.values()))
    assert values.min() < 0.02 and values.max() > 0.98 and 0.45 < values.mean() < 0.55


def test_harder_images_are_harder_to_classify(root: Path) -> None:
    """A linear classifier of the pixels, fitted on the training split, errs far more on the hardest third of the
    validation images than on the easiest third: the recorded difficulty is what makes an image hard."""
    from sklearn.linear_model import LogisticRegression

    difficulty = hard.difficulties(root)

    def split(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        paths = sorted((root / name).glob("*/*.png"))
        pixels = np.stack([np.asarray(Image.open(p).convert("L"), dtype=np.float32).ravel() / 255 for p in paths])
        labels = np.array([int(p.parent.name) for p in paths])
        return pixels, labels, np.array([difficulty[str(p.relative_to(root))] for p in paths])

    x, y, _ = split("train")
    model = LogisticRegression(max_iter=200, C=0.1).fit(x, y)
    x, y, d = split("val")
    correct = model.predict(x) == y
    easy, hardest = correct[d < 1 / 3].mean(), correct[d > 2 / 3].mean()
    assert easy > 0.7 and hardest < easy - 0.3, (easy, hardest)


@pytest.mark.parametrize("backend", BACKENDS)
def test_read_through_both_pipelines(root: Path, backend: str) -> None:
    """`--data.root digits-hard` reads the written files: in folder order, with their labels and pixels."""
    cfg = config(root, loader=backend)
    assert dataset_classes(cfg) == 10
    images, labels = (torch.cat(t) for t in zip(*build_loader(cfg, "val", 32)))
    paths = sorted((root / "val").glob("*/*.png"), key=lambda p: (p.parent.name, p.name))
    assert labels.tolist() == [int(p.parent.name) for p in paths]
    for i in (0, len(paths) // 2, len(paths) - 1):
        pixels = torch.from_numpy(np.asarray(Image.open(paths[i]), dtype=np.float32) / 255).permute(2, 0, 1)
        expected = (pixels - torch.tensor(cfg.mean).view(3, 1, 1)) / torch.tensor(cfg.std).view(3, 1, 1)
        torch.testing.assert_close(images[i], expected, atol=1e-5, rtol=0)
    train = build_loader(dataclasses.replace(cfg, holdout=300), "train", 32)
    held_out = build_loader(dataclasses.replace(cfg, holdout=300), "holdout", 32)
    assert (train.num_images, held_out.num_images) == (len(hard.difficulties(root)) - len(paths) - 300, 300)
    assert not set(train.images.names) & set(held_out.images.names)
