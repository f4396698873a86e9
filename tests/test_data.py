"""Data loading: the digits cache, DALI and PIL batches, sharding, determinism, WebDataset, the held-out split,
user errors, module structure."""

from __future__ import annotations

import ast
import dataclasses
import io
import multiprocessing
import re
import shutil
import tarfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dslim.data
from dslim.config import DataConfig
from dslim.data import build_loader, dataset_classes, digits_root, holdout_indices
from dslim.data.digits import split_digits
from dslim.data.pil import random_resized_crop_box
from dslim.errors import UserError

BACKENDS = ["dali", "pil"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("cache")
    digits_root(cache)
    return cache


def config(cache: Path, **changes: object) -> DataConfig:
    # crop_fraction 1: the evaluation crop is the whole 32x32 image, nothing is resampled.
    base = DataConfig(cache_dir=str(cache), batch_size=64, eval_batch_size=100, workers=2, crop_fraction=1.0)
    return dataclasses.replace(base, **changes)


def everything(loader: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """All batches of an epoch, concatenated."""
    images, labels = zip(*loader)
    return torch.cat(images), torch.cat(labels)


def val_labels() -> np.ndarray:
    """The digits validation labels in the loader's order: by class, then by file name."""
    from sklearn.datasets import load_digits

    return np.sort(load_digits().target[split_digits()["val"]])


def test_digits_cache_is_a_stratified_image_folder(cache: Path) -> None:
    from sklearn.datasets import load_digits

    target = load_digits().target
    root = cache / "digits-v1"
    split = split_digits()
    assert (len(split["train"]), len(split["val"])) == (1437, 360)
    for name, indices in split.items():
        files = sorted((root / name).glob("*/*.png"))
        assert [int(f.stem) for f in sorted(files, key=lambda f: f.stem)] == indices.tolist()
        assert all(int(f.parent.name) == target[int(f.stem)] for f in files)
        assert sorted(p.name for p in (root / name).iterdir()) == [str(c) for c in range(10)]
    # Stratified: every class is about 20% validation.
    fraction = np.bincount(target[split["val"]]) / np.bincount(target)
    assert np.all(np.abs(fraction - 0.2) < 0.01)
    image = Image.open(root / "val" / "0" / f"{split['val'][target[split['val']] == 0][0]:04d}.png")
    assert (image.size, image.mode) == ((32, 32), "RGB")
    assert digits_root(cache) == root
    assert [p.name for p in cache.iterdir()] == ["digits-v1"]  # no temporary folder left behind


def _build_digits(cache: str) -> str:
    return str(digits_root(cache))


def test_digits_cache_survives_concurrent_writers(tmp_path: Path) -> None:
    with multiprocessing.get_context("fork").Pool(2) as pool:
        roots = pool.map(_build_digits, [str(tmp_path)] * 2)
    assert roots == [str(tmp_path / "digits-v1")] * 2
    assert len(list((tmp_path / "digits-v1").glob("*/*/*.png"))) == 1797
    assert [p.name for p in tmp_path.iterdir()] == ["digits-v1"]


def test_dali_reads_the_png_files_normalized_with_folder_labels(cache: Path) -> None:
    cfg = config(cache)
    loader = build_loader(cfg, "val", 32)
    assert (len(loader), loader.num_images, loader.num_classes) == (4, 360, 10)
    batches = list(loader)
    assert [len(labels) for _, labels in batches] == [100, 100, 100, 60]
    images, labels = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    assert images.dtype == torch.float32 and images.shape == (360, 3, 32, 32)
    assert labels.dtype == torch.int64 and labels.tolist() == val_labels().tolist()
    first = sorted((cache / "digits-v1" / "val" / "0").glob("*.png"))[0]
    pixels = torch.from_numpy(np.asarray(Image.open(first), dtype=np.float32) / 255).permute(2, 0, 1)
    expected = (pixels - torch.tensor(cfg.mean).view(3, 1, 1)) / torch.tensor(cfg.std).view(3, 1, 1)
    torch.testing.assert_close(images[0], expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_batches(cache: Path, backend: str) -> None:
    loader = build_loader(config(cache, loader=backend), "train", 24)
    assert (len(loader), loader.num_images) == (1437 // 64, 1437)
    batches = list(loader)
    assert len(batches) == 22
    for images, labels in batches:
        assert images.shape == (64, 3, 24, 24) and images.dtype == torch.float32
        assert labels.dtype == torch.int64 and 0 <= labels.min() and labels.max() < 10
    # Normalized: the black background, each channel's minimum, maps to -mean/std.
    lowest = -torch.tensor(DataConfig.mean) / torch.tensor(DataConfig.std)
    images = torch.cat([b[0] for b in batches])
    torch.testing.assert_close(images.amin(dim=(0, 2, 3)), lowest, atol=1e-4, rtol=0)
    assert len(build_loader(config(cache, loader=backend), "train", 24, drop_last=False)) == 23


@pytest.mark.parametrize("backend", BACKENDS)
def test_shards_cover_the_validation_set_exactly_once(cache: Path, backend: str) -> None:
    cfg = config(cache, loader=backend)
    whole_images, whole_labels = everything(build_loader(cfg, "val", 32))
    # 7 does not divide 360: shards of 51 and 52 images, no padding.
    shards = [build_loader(cfg, "val", 32, shard_id=s, num_shards=7) for s in range(7)]
    parts = [everything(shard) for shard in shards]
    assert sorted({len(labels) for _, labels in parts}) == [51, 52]
    assert torch.equal(torch.cat([images for images, _ in parts]), whole_images)
    assert torch.equal(torch.cat([labels for _, labels in parts]), whole_labels)


def test_training_shards_are_disjoint_and_equal_in_length(cache: Path) -> None:
    shards = [build_loader(config(cache), "train", 32, shard_id=s, num_shards=2, epoch=3) for s in range(2)]
    orders = [shard.order() for shard in shards]
    assert len(orders[0]) == len(orders[1]) == 1437 // 2
    assert not set(orders[0]) & set(orders[1])
    assert len(shards[0]) == len(shards[1])


def test_processes_read_what_one_process_accumulating_their_batches_reads(cache: Path) -> None:
    """Step by step, 3 processes read the images of 1 process accumulating 3 micro-batches per step: the sharding
    that makes P-process runs comparable with one-process runs of the same global batch."""
    cfg = config(cache, batch_size=10)
    one = build_loader(cfg, "train", 32, epoch=2).order()
    three = [build_loader(cfg, "train", 32, shard_id=s, num_shards=3, epoch=2) for s in range(3)]
    steps = len(three[0])
    assert steps == len(one) // 10 // 3 == 1437 // 30
    for step in range(steps):
        together = np.concatenate([shard.order()[step * 10 : (step + 1) * 10] for shard in three])
        assert np.array_equal(together, one[step * 30 : (step + 1) * 30]), step
    # 1437 = 3 x 479: each process drops the last 9 of its 479 images; the epoch leaves out 27, none twice
    left_out = set(one) - {int(i) for shard in three for i in shard.order()[: steps * 10]}
    assert len(left_out) == 27


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_seed_and_epoch_give_the_same_batches(cache: Path, backend: str) -> None:
    cfg = config(cache, loader=backend, batch_size=128)

    def first_batches(**kw: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        loader = build_loader(cfg, "train", 24, seed=1, num_shards=2, **kw)
        return [batch for batch, _ in zip(loader, range(3))]

    reference = first_batches(epoch=2, shard_id=1)
    again = first_batches(epoch=2, shard_id=1)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(reference, again))
    for other in (first_batches(epoch=3, shard_id=1), first_batches(epoch=2, shard_id=0)):
        assert not torch.equal(reference[0][1], other[0][1])
        assert not torch.equal(reference[0][0], other[0][0])
    # Batches are distinct tensors, not one buffer reused by the pipeline.
    assert not torch.equal(reference[0][0], reference[1][0])


def test_set_epoch_equals_building_for_that_epoch(cache: Path) -> None:
    loader = build_loader(config(cache), "train", 24, seed=5)
    loader.set_epoch(4)
    images, labels = next(iter(loader))
    rebuilt_images, rebuilt_labels = next(iter(build_loader(config(cache), "train", 24, seed=5, epoch=4)))
    assert torch.equal(images, rebuilt_images) and torch.equal(labels, rebuilt_labels)


@pytest.mark.parametrize(
    ("image_size", "crop_fraction", "max_error"),
    [(28, 0.875, 1e-5), (31, 31 / 32, 1e-5), (24, 0.5, 0.05), (16, 1.0, 0.05)],
)
def test_pil_evaluation_matches_dali(cache: Path, image_size: int, crop_fraction: float, max_error: float) -> None:
    """Crops without resampling agree exactly; bilinear resizes within 3 grey levels of 255 (measured: about 1)."""
    cfg = config(cache, crop_fraction=crop_fraction)
    dali_images, dali_labels = everything(build_loader(cfg, "val", image_size))
    pil_images, pil_labels = everything(build_loader(dataclasses.replace(cfg, loader="pil"), "val", image_size))
    assert torch.equal(dali_labels, pil_labels)
    assert pil_images.shape == dali_images.shape == (360, 3, image_size, image_size)
    assert (pil_images - dali_images).abs().max() < max_error


def test_random_resized_crop_box_stays_in_range() -> None:
    rng = np.random.default_rng(0)
    area, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    for _ in range(500):
        left, top, w, h = random_resized_crop_box(500, 375, area, ratio, rng)
        assert 0 <= left and left + w <= 500 and 0 <= top and top + h <= 375
        assert 0.07 < w * h / (500 * 375) <= 1.0 and 0.7 < w / h < 1.4
    # No attempt can fit a 1:1 crop of 90% of a 10:1 image: the fallback is the widest allowed centered crop.
    assert random_resized_crop_box(1000, 100, (0.9, 1.0), (1.0, 1.0), rng) == (450, 0, 100, 100)


def write_shards(root: Path, split: str, files: list[Path], num_shards: int) -> list[Path]:
    """WebDataset shards `split-NNNN.tar` of `files` (ImageFolder paths), `cls` holding the class as text."""
    order = []
    for s in range(num_shards):
        with tarfile.open(root / f"{split}-{s:04d}.tar", "w") as tar:
            for f in files[s::num_shards]:
                for ext, data in (("png", f.read_bytes()), ("cls", f"{f.parent.name}\n".encode())):
                    info = tarfile.TarInfo(f"{f.parent.name}_{f.stem}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                order.append(f)
    return order


def test_webdataset_shards(cache: Path, tmp_path: Path) -> None:
    digits = cache / "digits-v1"
    write_shards(tmp_path, "train", sorted((digits / "train").glob("*/*.png")), 2)
    val_files = write_shards(tmp_path, "val", sorted((digits / "val").glob("*/*.png")), 2)
    cfg = config(tmp_path / "cache", root=str(tmp_path), format="webdataset")
    loader = build_loader(cfg, "val", 32)
    assert (loader.num_images, loader.num_classes, len(loader)) == (360, 10, 4)
    images, labels = everything(loader)
    assert labels.tolist() == [int(f.parent.name) for f in val_files]
    # The same pixels as the ImageFolder copy of each image.
    folder_images, _ = everything(build_loader(config(cache), "val", 32))
    folder_order = sorted((digits / "val").glob("*/*.png"))
    position = {f: i for i, f in enumerate(folder_order)}
    torch.testing.assert_close(images, folder_images[[position[f] for f in val_files]], atol=1e-5, rtol=0)
    pil_images, pil_labels = everything(build_loader(dataclasses.replace(cfg, loader="pil"), "val", 32))
    assert torch.equal(pil_labels, labels) and (pil_images - images).abs().max() < 1e-5
    parts = [everything(build_loader(cfg, "val", 32, shard_id=s, num_shards=7)) for s in range(7)]
    assert torch.equal(torch.cat([labels for _, labels in parts]), labels)
    train = build_loader(cfg, "train", 32, num_shards=2, shard_id=1)
    batches = list(train)
    assert len(batches) == len(train) == 1437 // 2 // 64
    assert all(b[0].shape == (64, 3, 32, 32) and set(b[1].tolist()) <= set(range(10)) for b in batches)
    assert len(list((tmp_path / "cache" / "wds-index").glob("*.idx"))) == 4
    assert dataset_classes(cfg) == 10
    with pytest.raises(UserError, match="--data.holdout needs --data.format folder or cifar"):
        build_loader(dataclasses.replace(cfg, holdout=10), "train", 32)


@pytest.fixture
def folder(cache: Path, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(cache / "digits-v1", root)
    return root


@pytest.mark.parametrize("backend", BACKENDS)
def test_layout_errors_name_the_path(cache: Path, folder: Path, backend: str) -> None:
    def error(split: str = "val") -> str:
        with pytest.raises(UserError) as e:
            build_loader(config(cache, root=str(folder), loader=backend), split, 32)
        return str(e.value)

    shutil.rmtree(folder / "val")
    assert f"{folder / 'val'} not found" in error()
    (folder / "val" / "3").mkdir(parents=True)
    assert f"class folder {folder / 'val' / '3'} has no images" in error()
    shutil.rmtree(folder)
    assert f"data root {folder} does not exist" in error("train")


@pytest.mark.parametrize("backend", BACKENDS)
def test_truncated_png_is_rejected_up_front(cache: Path, folder: Path, backend: str) -> None:
    bad = sorted((folder / "train" / "7").glob("*.png"))[5]
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(UserError, match=f"image {bad} is not a complete PNG"):
        build_loader(config(cache, root=str(folder), loader=backend), "train", 32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("split", ["train", "val"])
def test_undecodable_image_is_named(cache: Path, tmp_path: Path, backend: str, split: str) -> None:
    """A JPEG that fails to decode surfaces as a UserError naming it (DALI's own error does not name it)."""
    for s in ("train", "val"):
        for c in range(2):
            (tmp_path / s / str(c)).mkdir(parents=True)
            for i in range(40):
                image = np.full((40, 30, 3), 3 * i + 100 * c, dtype=np.uint8)
                Image.fromarray(image).save(tmp_path / s / str(c) / f"{i:02d}.jpg")
    bad = tmp_path / split / "1" / "17.jpg"
    bad.write_bytes(b"this is not a JPEG" * 20)
    loader = build_loader(
        config(cache, root=str(tmp_path), loader=backend, batch_size=16, eval_batch_size=16), split, 24
    )
    with pytest.raises(UserError, match=f"cannot read image {bad}"):
        list(loader)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_mixed_decoder_without_cuda(cache: Path) -> None:
    with pytest.raises(UserError, match="--data.decoder cpu"):
        build_loader(config(cache, decoder="mixed"), "val", 32)


def test_batch_larger_than_the_split(cache: Path) -> None:
    with pytest.raises(UserError, match="lower the batch size"):
        build_loader(config(cache, batch_size=1000), "train", 32, num_shards=2)


def train_labels(cache: Path) -> np.ndarray:
    """The digits training labels in the loader's order."""
    return build_loader(config(cache), "train", 32).images.labels


def test_holdout_is_stratified_fixed_and_nested(cache: Path) -> None:
    labels = train_labels(cache)
    sizes = np.bincount(labels)
    chosen = {n: holdout_indices(config(cache, holdout=n)) for n in (3, 10, 50, 200)}
    assert all(len(np.unique(c)) == len(c) == n and np.all(np.diff(c) > 0) for n, c in chosen.items())
    assert len(set(labels[chosen[3]])) == 3
    assert sorted(labels[chosen[10]]) == list(range(10))
    for n in (50, 200):
        # Each class in proportion to its size, within one image.
        assert np.abs(np.bincount(labels[chosen[n]], minlength=10) - n * sizes / len(labels)).max() < 1
    # Drawn at random within each class, not its first files in name order.
    first_of_class = np.searchsorted(labels, labels)  # labels are sorted by class
    assert (chosen[50] - first_of_class[chosen[50]]).max() > 50
    # A larger holdout only adds images: a search on N images is a subset of one on more.
    assert set(chosen[3]) < set(chosen[10]) < set(chosen[50]) < set(chosen[200])
    assert np.array_equal(holdout_indices(config(cache, holdout=50, batch_size=8, loader="pil")), chosen[50])
    assert len(holdout_indices(config(cache))) == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_holdout_split_is_left_out_of_training(cache: Path, backend: str) -> None:
    cfg = config(cache, holdout=50, loader=backend)
    held_out = holdout_indices(cfg)
    everyone = build_loader(config(cache), "train", 32).images.names
    held_out_names = {everyone[i] for i in held_out}
    # The held-out images, with evaluation transforms, whatever the run's seed.
    holdout = build_loader(cfg, "holdout", 32, seed=3)
    assert (holdout.num_images, len(holdout), holdout.train) == (50, 1, False)
    assert set(holdout.images.names) == held_out_names
    images, labels = everything(holdout)
    assert labels.tolist() == train_labels(cache)[held_out].tolist()
    other_seed_images, _ = everything(build_loader(cfg, "holdout", 32, seed=4))
    assert torch.equal(images, other_seed_images)
    # Training never reads them, in any epoch or shard, and reads all the others.
    for epoch in range(2):
        seen = []
        for shard in range(2):
            train = build_loader(cfg, "train", 32, shard_id=shard, num_shards=2, epoch=epoch)
            assert train.num_images == 1437 - 50 and len(train) == (1437 - 50) // 2 // 64
            seen += [train.images.names[i] for i in train.order()]
        assert not held_out_names & set(seen) and len(set(seen)) == len(seen) == 1437 - 51


def test_holdout_errors_name_the_option(cache: Path) -> None:
    with pytest.raises(UserError, match="set --data.holdout N"):
        build_loader(config(cache), "holdout", 32)
    # 1437 training images, batches of 64: at most 1373 set aside.
    assert len(holdout_indices(config(cache, holdout=1373))) == 1373
    for split in ("train", "holdout"):
        with pytest.raises(UserError, match="--data.holdout 1374 leaves less than one batch .* at most 1373"):
            build_loader(config(cache, holdout=1374), split, 32)
    assert build_loader(config(cache, holdout=1374), "val", 32).num_images == 360


@pytest.mark.parametrize(
    ("field", "value", "option"),
    [
        ("batch_size", 0, "--data.batch-size"),
        ("eval_batch_size", 0, "--data.eval-batch-size"),
        ("workers", -1, "--data.workers"),
        ("holdout", -1, "--data.holdout"),
        ("pad", -1, "--data.pad"),
        ("crop_fraction", 0.0, "--data.crop-fraction"),
        ("crop_fraction", 1.5, "--data.crop-fraction"),
        ("random_area", (0.0, 1.0), "--data.random-area"),
        ("random_area", (0.5, 0.2), "--data.random-area"),
        ("random_aspect_ratio", (0.0, 1.0), "--data.random-aspect-ratio"),
        ("std", (0.2, 0.0, 0.2), "--data.std"),
    ],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_settings_name_the_option(cache: Path, field: str, value: object, option: str, backend: str) -> None:
    for split in ("train", "val"):
        with pytest.raises(UserError, match=re.escape(option)):
            build_loader(config(cache, loader=backend, **{field: value}), split, 32)


def test_bad_sizes_and_shard_counts(cache: Path) -> None:
    with pytest.raises(UserError, match="--model.input-size"):
        build_loader(config(cache), "val", 0)
    with pytest.raises(UserError, match="the val split has 360 images, fewer than the 400 processes"):
        build_loader(config(cache), "val", 32, shard_id=0, num_shards=400)


def test_dataset_classes_without_decoding(cache: Path, tmp_path: Path) -> None:
    assert dataset_classes(config(cache)) == 10
    for name in ("cat", "dog", "emu"):
        (tmp_path / "train" / name).mkdir(parents=True)  # empty folders: nothing is read but the listing
    assert dataset_classes(config(cache, root=str(tmp_path))) == 3
    with pytest.raises(UserError, match=f"data root {tmp_path / 'absent'} does not exist"):
        dataset_classes(config(cache, root=str(tmp_path / "absent")))


def test_data_modules_import_one_way() -> None:
    """Each module imports only modules of lower layers: no import cycle inside the package."""
    layers = [
        ("augment", "cache", "cifar"),
        ("digits",),
        ("dali_augment", "digits_hard", "images", "pil_augment"),
        ("plan",),
        ("dali", "pil"),
        ("loader",),
    ]
    layer = {module: i for i, modules in enumerate(layers) for module in modules}
    folder = Path(dslim.data.__file__).parent
    assert {p.stem for p in folder.glob("*.py")} == set(layer) | {"__init__"}
    for module, level in layer.items():
        imported = set()
        for node in ast.walk(ast.parse((folder / f"{module}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "dslim.data":
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dslim.data."):
                imported.add(node.module.split(".")[2])
        assert all(layer[m] < level for m in imported), f"{module} imports {imported}"
