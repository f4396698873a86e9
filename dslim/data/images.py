"""What a split holds: the images of an ImageFolder, of WebDataset shards or of CIFAR files, in one fixed order,
with labels.

Every backend and every process derives its work from this list, so they all agree on what image `i` is.
Layout problems are found here, up front, and reported as `UserError`s naming the path.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from dslim.data import cifar
from dslim.errors import UserError
from dslim.io import write_text
from dslim.io.readers import SHARD_INDEX, read_json

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
WDS_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LAYOUT_HINT = "--data.root must hold train/<class>/<image> and val/<class>/<image> (ImageFolder)"


@dataclass(frozen=True, eq=False)
class Images:
    """The images of one split. `names[i]` is a file path (folder), `shard.tar:key` (WebDataset) or `file#record`
    (CIFAR)."""

    names: list[str]
    labels: np.ndarray
    """int64, one per image."""
    num_classes: int
    shards: tuple[str, ...] = ()
    """WebDataset: the tar files, in reading order."""
    index_paths: tuple[str, ...] = ()
    """WebDataset: DALI's index file of each shard."""
    locations: np.ndarray | None = None
    """WebDataset: (shard, byte offset, byte size) of each image inside its tar, for random access."""
    pixels: np.ndarray | None = None
    """Images held in memory (CIFAR): uint8 (N, H, W, 3) RGB."""

    def __len__(self) -> int:
        return len(self.names)

    def decode(self, i: int) -> Image.Image:
        """Image `i` as RGB, decoded by PIL; a `UserError` naming it when it cannot be read or decoded."""
        if self.pixels is not None:
            return Image.fromarray(self.pixels[i])
        try:
            return Image.open(io.BytesIO(self.read(i))).convert("RGB")
        except UnidentifiedImageError:
            reason = "not an image format PIL knows"
        except (OSError, ValueError, SyntaxError) as e:
            reason = str(e)
        raise UserError(f"cannot read image {self.names[i]} ({reason}); replace or remove it")

    def read(self, i: int) -> bytes:
        """The encoded bytes of image `i`."""
        if self.locations is None:
            return Path(self.names[i]).read_bytes()
        shard, offset, size = (int(v) for v in self.locations[i])
        with open(self.shards[shard], "rb") as f:
            f.seek(offset)
            return f.read(size)

    def subset(self, indices: np.ndarray) -> Images:
        """The images at `indices`, in that order (not for WebDataset, which DALI reads shard by shard)."""
        if self.locations is not None:
            raise ValueError("a WebDataset split cannot be subset")
        pixels = None if self.pixels is None else self.pixels[indices]
        names = [self.names[i] for i in indices]
        return Images(names=names, labels=self.labels[indices], num_classes=self.num_classes, pixels=pixels)


def scan(root: Path, split: str, format: str, cache_dir: Path) -> Images:
    """List the images of `split` under `root`; raise `UserError` for anything the user must fix."""
    _check_root(root)
    if format == "webdataset":
        return _scan_webdataset(root, split, cache_dir)
    if format == "cifar":
        pixels, labels, names, num_classes = cifar.read(root, split)
        return Images(names=names, labels=labels, num_classes=num_classes, pixels=pixels)
    return _scan_folder(root, split)


def count_classes(root: Path, format: str, cache_dir: Path) -> int:
    """Classes of the data set under `root`, without decoding any image."""
    _check_root(root)
    if format == "webdataset":
        return _scan_webdataset(root, "train", cache_dir).num_classes
    if format == "cifar":
        return cifar.detect(root).num_classes
    return len(_class_names(root))


def _check_root(root: Path) -> None:
    if not root.is_dir():
        raise UserError(
            f"data root {root} does not exist; set --data.root to your dataset (or `digits`, `digits-hard`)"
        )


def _class_names(root: Path) -> list[str]:
    """Class names are the sorted folders of `train/` (as torchvision's ImageFolder), for both splits, so that a
    label means the same class in both."""
    train = root / "train"
    if not train.is_dir():
        raise UserError(f"{train} not found: {LAYOUT_HINT}")
    names = sorted(e.name for e in os.scandir(train) if e.is_dir() and not e.name.startswith("."))
    if not names:
        raise UserError(f"{train} has no class folders: {LAYOUT_HINT}")
    return names


def _scan_folder(root: Path, split: str) -> Images:
    classes = _class_names(root)
    split_dir = root / split
    if not split_dir.is_dir():
        raise UserError(f"{split_dir} not found: {LAYOUT_HINT}")
    label_of = {name: label for label, name in enumerate(classes)}
    present = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
    names: list[str] = []
    labels: list[int] = []
    for name in present:
        if name not in label_of:
            raise UserError(f"class folder {split_dir / name} has no counterpart in {root / 'train'}; remove it")
        class_dir = split_dir / name
        # DirEntry.is_file() uses the directory listing's file type, so this stays one listing per class.
        files = sorted(
            e.name
            for e in os.scandir(class_dir)
            if e.name.lower().endswith(IMAGE_EXTENSIONS) and not e.name.startswith(".") and e.is_file()
        )
        if not files:
            raise UserError(
                f"class folder {class_dir} has no images ({', '.join(IMAGE_EXTENSIONS)}); add images or remove it"
            )
        paths = [str(class_dir / f) for f in files]
        for path in paths:
            if path.lower().endswith(".png"):
                with open(path, "rb") as f:
                    _check_png(path, f, 0, os.fstat(f.fileno()).st_size)
        names += paths
        labels += [label_of[name]] * len(files)
    if not names:
        raise UserError(f"{split_dir} has no class folders: {LAYOUT_HINT}")
    return Images(names=names, labels=np.array(labels, dtype=np.int64), num_classes=len(classes))


def _shards(root: Path, split: str) -> list[Path]:
    shards = sorted(root.glob(f"{split}-*.tar"))
    if not shards:
        raise UserError(f"no WebDataset shards {root}/{split}-*.tar; write them or use --data.format folder")
    return shards


def _scan_webdataset(root: Path, split: str, cache_dir: Path) -> Images:
    shards = _shards(root, split)
    names: list[str] = []
    labels: list[int] = []
    locations: list[tuple[int, int, int]] = []
    index_paths: list[str] = []
    for s, shard in enumerate(shards):
        index_path, samples = _index_shard(shard, cache_dir / "wds-index")
        index_paths.append(str(index_path))
        names += [f"{shard}:{key}" for key in samples["keys"]]
        labels += samples["labels"]
        locations += [(s, offset, size) for offset, size in zip(samples["offsets"], samples["sizes"])]
    # Labels index the classes of the training shards, whichever split is read.
    train_labels = labels if split == "train" else _scan_webdataset(root, "train", cache_dir).labels
    return Images(
        names=names,
        labels=np.array(labels, dtype=np.int64),
        num_classes=int(max(train_labels)) + 1,
        shards=tuple(str(p) for p in shards),
        index_paths=tuple(index_paths),
        locations=np.array(locations, dtype=np.int64).reshape(-1, 3),
    )


def _index_shard(shard: Path, index_dir: Path) -> tuple[Path, dict[str, list]]:
    """DALI's index of `shard` (so DALI need not re-read the whole tar at every pipeline build) plus our own
    record of each sample's image location and label, both cached under `index_dir` keyed by path, size, mtime."""
    stat = shard.stat()
    digest = hashlib.sha1(f"{shard.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    index_path = index_dir / f"{shard.stem}-{digest}.idx"
    samples_path = index_path.with_suffix(".json")
    if samples_path.exists() and index_path.exists():
        with contextlib.suppress(UserError):  # a damaged cache entry is written again below
            return index_path, read_json(samples_path, "shard index", SHARD_INDEX)  # type: ignore[return-value]

    groups = _tar_samples(shard)
    samples: dict[str, list] = {"keys": [], "offsets": [], "sizes": [], "labels": []}
    lines = [f"v1.2 {len(groups)}"]
    with open(shard, "rb") as f:
        for key, members in groups:
            by_ext = {ext.lower(): m for ext, m in members}
            image = next((by_ext[e] for e in WDS_IMAGE_EXTENSIONS if e in by_ext), None)
            if image is None or "cls" not in by_ext:
                raise UserError(f"sample {key} in {shard} lacks an image (jpg/png) or a `cls` label; fix the shard")
            if image.name.lower().endswith(".png"):
                _check_png(f"{shard}:{image.name}", f, image.offset_data, image.size)
            f.seek(by_ext["cls"].offset_data)
            text = f.read(by_ext["cls"].size)
            try:
                label = int(text.decode().strip())
            except ValueError:
                raise UserError(f"sample {key} in {shard}: `cls` must hold an integer, not {text[:20]!r}") from None
            samples["keys"].append(key)
            samples["offsets"].append(image.offset_data)
            samples["sizes"].append(image.size)
            samples["labels"].append(label)
            # DALI's index format v1.2: per sample, `ext offset size name` for each of its files.
            lines.append(" ".join(f"{ext} {m.offset_data} {m.size} {m.name}" for ext, m in members))

    index_dir.mkdir(parents=True, exist_ok=True)
    write_text(index_path, "\n".join(lines) + "\n")  # concurrent processes each rename a complete copy
    write_text(samples_path, json.dumps(samples))
    return index_path, samples


def _tar_samples(shard: Path) -> list[tuple[str, list[tuple[str, tarfile.TarInfo]]]]:
    """Files of a tar grouped into samples as WebDataset (and DALI) do: consecutive files sharing the name up to
    the first dot of their base name; hidden files are skipped."""
    groups: list[tuple[str, list[tuple[str, tarfile.TarInfo]]]] = []
    try:
        with tarfile.open(shard, "r:") as tar:
            for member in tar:
                start = member.name.rfind("/") + 1
                dot = member.name.find(".", start)
                if not member.isreg() or dot <= start:
                    continue
                key, ext = member.name[:dot], member.name[dot + 1 :]
                if groups and groups[-1][0] == key:
                    groups[-1][1].append((ext, member))
                else:
                    groups.append((key, [(ext, member)]))
    except tarfile.TarError as e:
        raise UserError(f"cannot read WebDataset shard {shard} ({e}); rewrite it") from None
    if not groups:
        raise UserError(f"WebDataset shard {shard} holds no samples; rewrite or remove it")
    return groups


def _check_png(name: str, f: BinaryIO, offset: int, size: int) -> None:
    """Reject a PNG file that is truncated or not a PNG at all, from its first and last bytes.

    DALI's CPU decoder can crash the process (segmentation fault) on such a PNG instead of raising an error, so
    they must not reach it; other corruption (and any JPEG) fails cleanly and is reported by the loader.
    """
    f.seek(offset)
    head = f.read(8)
    tail_start = max(8, size - 1024)  # IEND ends a PNG; a few writers append bytes after it
    f.seek(offset + tail_start)
    if head != PNG_SIGNATURE or b"IEND" not in f.read(size - tail_start):
        raise UserError(f"image {name} is not a complete PNG file (truncated or corrupt); replace or remove it")
