"""CIFAR files: the four distributed layouts read back exactly by both backends, the pad crop, the restricted
unpickler, and the errors of missing, truncated, corrupt or foreign files."""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import re
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dslim.config import DataConfig
from dslim.data import build_loader, cifar, dataset_classes, holdout_indices
from dslim.errors import UserError

BACKENDS = ["dali", "pil"]
LAYOUTS = ["cifar-10-batches-bin", "cifar-100-binary", "cifar-10-batches-py", "cifar-100-python"]
TEST_IMAGES = 13


@pytest.fixture(autouse=True)
def small_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """The official files hold 10000 or 50000 images; these tests write 100 training and 13 test images."""
    counts = {f"data_batch_{i}": 20 for i in range(1, 6)} | {"train": 100}
    monkeypatch.setattr(cifar, "IMAGES_PER_FILE", counts | {"test_batch": TEST_IMAGES, "test": TEST_IMAGES})


def save_py2(obj: object, f: io.BufferedWriter) -> None:
    """Pickle as Python 2 did (the official files): every string as a byte string, numpy 1.x module names."""

    class Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
        dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

        def save_string(self, obj: str | bytes) -> None:
            data = obj.encode("latin1") if isinstance(obj, str) else obj
            if len(data) < 256:
                self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
            else:
                self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
            self.memoize(obj)

        dispatch[str] = save_string
        dispatch[bytes] = save_string

    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(obj)
    f.write(buffer.getvalue().replace(b"cnumpy._core.", b"cnumpy.core."))


SAVERS: dict[str, Callable[[object, io.BufferedWriter], None]] = {
    "protocol2": lambda obj, f: pickle.dump(obj, f, protocol=2),
    "protocol5": lambda obj, f: pickle.dump(obj, f, protocol=5),
    "python2": save_py2,
}


def write_cifar(root: Path, layout: str, seed: int = 0, save: str = "python2") -> dict[str, tuple]:
    """The files of `layout` with random pixels and labels; returns {split: (HWC uint8 pixels, fine labels)}."""
    rng = np.random.default_rng(seed)
    hundred = "100" in layout
    names = {"train": ["train"], "val": ["test"]} if hundred else {
        "train": [f"data_batch_{i}" for i in range(1, 6)], "val": ["test_batch"]}  # fmt: skip
    root.mkdir(parents=True)
    expected = {}
    for split, files in names.items():
        count = TEST_IMAGES if split == "val" else 100
        pixels = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
        fine = rng.integers(0, 100 if hundred else 10, count)
        coarse = rng.integers(0, 20, count)
        planar = pixels.transpose(0, 3, 1, 2).reshape(count, 3072)
        chunks = np.array_split(np.arange(count), len(files))
        for name, rows in zip(files, chunks):
            if layout.endswith(("bin", "binary")):
                labels = np.stack([coarse[rows], fine[rows]], 1) if hundred else fine[rows, None]
                (root / f"{name}.bin").write_bytes(np.concatenate([labels.astype(np.uint8), planar[rows]], 1).tobytes())
            else:
                batch = {b"batch_label": b"testing", b"data": planar[rows], b"filenames": [b"x.png"] * len(rows)}
                if hundred:
                    batch |= {b"fine_labels": fine[rows].tolist(), b"coarse_labels": coarse[rows].tolist()}
                else:
                    batch[b"labels"] = fine[rows].tolist()
                with open(root / name, "wb") as f:
                    SAVERS[save](batch, f)
        expected[split] = (pixels, fine)
    return expected


def config(root: Path, **changes: object) -> DataConfig:
    base = DataConfig(root=str(root), format="cifar", batch_size=16, eval_batch_size=5, workers=2, crop_fraction=1.0)
    return dataclasses.replace(base, **changes)


def everything(loader) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[no-untyped-def]
    images, labels = zip(*loader)
    return torch.cat(images), torch.cat(labels)


def pixels_of(images: torch.Tensor, cfg: DataConfig) -> np.ndarray:
    """Normalized NCHW batches back to uint8 HWC pixels; fails if any value is not a whole pixel value."""
    values = (images * torch.tensor(cfg.std).view(3, 1, 1) + torch.tensor(cfg.mean).view(3, 1, 1)) * 255
    values = values.permute(0, 2, 3, 1).numpy()
    assert np.abs(values - np.rint(values)).max() < 1e-3, "pixels were resampled"
    return np.rint(values).astype(np.uint8)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_both_splits_are_read_exactly(tmp_path: Path, layout: str, backend: str) -> None:
    expected = write_cifar(tmp_path / layout, layout)
    cfg = config(tmp_path / layout, loader=backend)
    assert dataset_classes(cfg) == (100 if "100" in layout else 10)
    val = build_loader(cfg, "val", 32)
    assert (val.num_images, val.num_classes) == (TEST_IMAGES, dataset_classes(cfg))
    batches = list(val)
    assert [len(labels) for _, labels in batches] == [5, 5, 3]
    images, labels = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    assert np.array_equal(pixels_of(images, cfg), expected["val"][0])
    assert labels.tolist() == expected["val"][1].tolist()
    mean, std = torch.tensor(cfg.mean).view(3, 1, 1), torch.tensor(cfg.std).view(3, 1, 1)
    normalized = (torch.from_numpy(expected["val"][0]).permute(0, 3, 1, 2) / 255 - mean) / std
    torch.testing.assert_close(images, normalized, atol=1e-5, rtol=0)
    # A training crop of the whole image without padding or flip is the image itself: training batches are the
    # training files' images, concatenated in file order, in this epoch's order.
    identity = dataclasses.replace(cfg, augment="pad_crop", pad=0, flip=False)
    train = build_loader(identity, "train", 32, epoch=1, drop_last=False)
    images, labels = everything(train)
    order = train.order()
    assert sorted(order.tolist()) == list(range(100))
    assert np.array_equal(pixels_of(images, cfg), expected["train"][0][order])
    assert labels.tolist() == expected["train"][1][order].tolist()


@pytest.mark.parametrize("save", list(SAVERS))
@pytest.mark.parametrize("layout", ["cifar-10-batches-py", "cifar-100-python"])
def test_pickles_of_python_2_and_3_and_numpy_1_and_2(tmp_path: Path, layout: str, save: str) -> None:
    expected = write_cifar(tmp_path / layout, layout, save=save)
    for split in ("train", "val"):
        pixels, labels, names, num_classes = cifar.read(tmp_path / layout, split)
        assert np.array_equal(pixels, expected[split][0]) and np.array_equal(labels, expected[split][1])
        assert num_classes == (100 if "100" in layout else 10) and len(names) == len(labels)


def find_window(output: np.ndarray, source: np.ndarray, pad: int) -> tuple[int, int, bool] | None:
    """(top, left, flipped) of the window of `source` zero-padded by `pad` that `output` is, or None."""
    size = output.shape[0]
    padded = np.pad(source, ((pad, pad), (pad, pad), (0, 0)))
    for top in range(padded.shape[0] - size + 1):
        for left in range(padded.shape[1] - size + 1):
            window = padded[top : top + size, left : left + size]
            for flipped in (False, True):
                if np.array_equal(window[:, ::-1] if flipped else window, output):
                    return top - pad, left - pad, flipped
    return None


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("format", "size"), [("cifar", 32), ("folder", 28)])
def test_pad_crop_is_a_random_window_of_the_padded_image(tmp_path: Path, backend: str, format: str, size: int) -> None:
    expected = write_cifar(tmp_path / "cifar", "cifar-10-batches-bin")
    root = tmp_path / "cifar"
    if format == "folder":
        root = tmp_path / "folder"
        for split, (pixels, labels) in expected.items():
            for i, (image, label) in enumerate(zip(pixels, labels)):
                (root / split / str(label)).mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(root / split / str(label) / f"{i:03d}.png")
    cfg = config(root, format=format, loader=backend, augment="pad_crop", pad=4, flip=True)
    windows = []
    for epoch in range(2):
        loader = build_loader(cfg, "train", size, epoch=epoch, drop_last=False)
        images, labels = everything(loader)
        sources = [loader.images.decode(int(i)) for i in loader.order()]
        for output, source, label, i in zip(pixels_of(images, cfg), sources, labels, loader.order()):
            assert label == loader.images.labels[i]
            window = find_window(output, np.asarray(source), cfg.pad)
            assert window is not None, "not a window of the zero-padded image"
            windows.append(window)
    # Every corner position of the padded image and both flips occur (200 draws of 9 or 13 positions per axis).
    positions = set(range(-cfg.pad, 32 + cfg.pad - size + 1))
    assert {top for top, _, _ in windows} == positions and {left for _, left, _ in windows} == positions
    assert {flipped for _, _, flipped in windows} == {False, True}


def grey_level_difference(a: torch.Tensor, b: torch.Tensor, cfg: DataConfig) -> torch.Tensor:
    return (a - b).abs() * torch.tensor(cfg.std).view(3, 1, 1) * 255


@pytest.mark.parametrize(("image_size", "crop_fraction"), [(32, 0.875), (24, 1.0)])
def test_resizes_agree_between_backends(tmp_path: Path, image_size: int, crop_fraction: float) -> None:
    pixels = write_cifar(tmp_path / "c", "cifar-10-batches-bin")["train"][0]
    cfg = config(tmp_path / "c", crop_fraction=crop_fraction)
    dali_images, dali_labels = everything(build_loader(cfg, "val", image_size))
    pil_images, pil_labels = everything(build_loader(dataclasses.replace(cfg, loader="pil"), "val", image_size))
    assert torch.equal(dali_labels, pil_labels)
    assert dali_images.shape == pil_images.shape == (TEST_IMAGES, 3, image_size, image_size)
    # On noise, the worst case for resampling, the two bilinear resizes differ by under 1 grey level on average
    # (measured: 0.5, at most 9 on a pixel); an image shifted by one pixel differs by over 30 on average.
    difference = grey_level_difference(dali_images, pil_images, cfg)
    assert difference.mean() < 1 and difference.max() < 12
    # A random resized crop of the whole image (area and aspect ratio 1) is the image resized: the same in both
    # backends, and the image itself at its own size.
    whole = dataclasses.replace(cfg, random_area=(1.0, 1.0), random_aspect_ratio=(1.0, 1.0), flip=False)
    crops = {}
    for backend in BACKENDS:
        loader = build_loader(dataclasses.replace(whole, loader=backend), "train", image_size)
        crops[backend], labels = everything(loader)
        assert crops[backend].shape == (96, 3, image_size, image_size)
        assert labels.tolist() == loader.images.labels[loader.order()[:96]].tolist()
    difference = grey_level_difference(crops["dali"], crops["pil"], cfg)
    assert difference.mean() < 1 and difference.max() < 12
    if image_size == 32:
        assert np.array_equal(pixels_of(crops["dali"], cfg), pixels[loader.order()[:96]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_held_out_images_are_evaluated_once_and_never_trained_on(tmp_path: Path, backend: str) -> None:
    pixels = write_cifar(tmp_path / "c", "cifar-10-batches-py")["train"][0]
    # Training crops that are the image itself, so that trained images can be recognized.
    cfg = config(tmp_path / "c", loader=backend, holdout=13, augment="pad_crop", pad=0, flip=False)
    held_out = holdout_indices(cfg)
    batches = list(build_loader(cfg, "holdout", 32))
    assert [len(labels) for _, labels in batches] == [5, 5, 3]
    images = torch.cat([b[0] for b in batches])
    assert np.array_equal(pixels_of(images, cfg), pixels[held_out])
    shards = [everything(build_loader(cfg, "holdout", 32, shard_id=s, num_shards=3))[0] for s in range(3)]
    assert [len(shard) for shard in shards] == [4, 4, 5] and torch.equal(torch.cat(shards), images)
    kept = {image.tobytes() for i, image in enumerate(pixels) if i not in held_out}
    for epoch in range(2):
        trained = []
        for shard in range(2):
            images, _ = everything(build_loader(cfg, "train", 32, shard_id=shard, num_shards=2, epoch=epoch))
            trained += [image.tobytes() for image in pixels_of(images, cfg)]
        # 87 images left, 43 per process: two batches of 16 each.
        assert len(set(trained)) == len(trained) == 64 and set(trained) <= kept


def test_missing_truncated_and_corrupt_files_are_named(tmp_path: Path) -> None:
    root = tmp_path / "cifar-10-batches-bin"
    write_cifar(root, "cifar-10-batches-bin")
    cfg = config(root)

    def error(split: str = "train") -> str:
        with pytest.raises(UserError) as e:
            build_loader(cfg, split, 32)
        return str(e.value)

    test_batch = root / "test_batch.bin"
    data = test_batch.read_bytes()
    test_batch.write_bytes(data[:-100])
    assert f"{test_batch} has {len(data) - 100} bytes, not 13 CIFAR-10 binary records of 3073 bytes" in error("val")
    test_batch.write_bytes(data[: 12 * 3073])  # whole records, one too few
    assert f"{test_batch} has {12 * 3073} bytes, not 13" in error("val")
    test_batch.write_bytes(b"\x0a" + data[1:])  # label 10 of 10 classes
    assert f"{test_batch}: image 0 has label 10, not one of the 10 CIFAR-10 binary classes" in error("val")
    (root / "data_batch_3.bin").unlink()
    assert f"{root / 'data_batch_3.bin'} not found: a CIFAR-10 binary folder holds data_batch_1.bin" in error()
    for name in os.listdir(root):
        (root / name).unlink()
    assert f"{root} holds no CIFAR files; point --data.root at the extracted cifar-10-batches-bin/" in error()


def test_pickle_without_the_expected_keys_or_truncated(tmp_path: Path) -> None:
    root = tmp_path / "cifar-100-python"
    write_cifar(root, "cifar-100-python", save="protocol2")
    test = root / "test"
    data = test.read_bytes()
    test.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=f"cannot read {re.escape(str(test))} as a pickle .*truncated or corrupt"):
        build_loader(config(root), "val", 32)
    # CIFAR-10's key where CIFAR-100's fine labels belong.
    test.write_bytes(pickle.dumps({b"data": np.zeros((13, 3072), np.uint8), b"labels": [0] * 13}))
    with pytest.raises(
        UserError, match=f"{re.escape(str(test))} is not a CIFAR-100 python batch: expected .*fine_labels"
    ):
        build_loader(config(root), "val", 32)


class Payload:
    """Pickles as a call of `os.system`: unpickling it normally runs a shell command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return (os.system, (self.command,))


def test_pickle_naming_any_other_object_is_refused_without_running_it(tmp_path: Path) -> None:
    root = tmp_path / "cifar-10-batches-py"
    write_cifar(root, "cifar-10-batches-py")
    # The payload does run when unpickled normally.
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(Payload(f"touch {control}")))
    assert control.exists()
    marker = tmp_path / "marker"
    batch = {b"data": np.zeros((13, 3072), np.uint8), b"labels": [Payload(f"touch {marker}")] * 13}
    (root / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(UserError) as e:
        build_loader(config(root), "val", 32)
    assert f"{root / 'test_batch'} asks to load {os.system.__module__}.system, which no CIFAR file holds" in str(
        e.value
    )
    assert not marker.exists()
