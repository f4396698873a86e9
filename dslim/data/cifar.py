"""CIFAR-10 and CIFAR-100 read from the files their authors distribute, into memory, without torchvision.

`--data.root` is one of the extracted folders (which one is told by the files in it):

- `cifar-10-batches-bin/`: `data_batch_1.bin` .. `data_batch_5.bin`, `test_batch.bin`; records of 1 label byte
  and 3072 pixel bytes (the red, green and blue 32x32 planes).
- `cifar-100-binary/`: `train.bin`, `test.bin`; records of 2 label bytes (coarse, fine) and 3072 pixel bytes.
- `cifar-10-batches-py/`, `cifar-100-python/`: the same batches pickled as dicts with `b"data"` (uint8 N x 3072)
  and `b"labels"` (CIFAR-10) or `b"fine_labels"` (CIFAR-100). They are read by an unpickler that only rebuilds
  numpy arrays and plain containers: a pickle can run any code it names, so anything else is refused.

CIFAR-100 uses its 100 fine labels. `train` is the training batches, `val` the test batch.
"""

from __future__ import annotations

import codecs
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dslim.errors import UserError

SIDE = 32
PIXELS = 3 * SIDE * SIDE
IMAGES_PER_FILE = {"data_batch_1": 10000, "data_batch_2": 10000, "data_batch_3": 10000, "data_batch_4": 10000,
                   "data_batch_5": 10000, "test_batch": 10000, "train": 50000, "test": 10000}  # fmt: skip
"""Images in each official file (by name without `.bin`): any other count means a truncated or foreign file."""


@dataclass(frozen=True)
class Layout:
    """One of the four distributed folders."""

    name: str
    folder: str
    files: dict[str, tuple[str, ...]]
    """File names of the `train` and `val` splits."""
    num_classes: int
    label_bytes: int
    """Binary records: label bytes before the pixels, the label used being the last; 0: pickled batches."""

    @property
    def label_key(self) -> str:
        return "labels" if self.num_classes == 10 else "fine_labels"


def _batches(suffix: str) -> dict[str, tuple[str, ...]]:
    return {"train": tuple(f"data_batch_{i}{suffix}" for i in range(1, 6)), "val": (f"test_batch{suffix}",)}


LAYOUTS = (
    Layout("CIFAR-10 binary", "cifar-10-batches-bin", _batches(".bin"), 10, 1),
    Layout("CIFAR-100 binary", "cifar-100-binary", {"train": ("train.bin",), "val": ("test.bin",)}, 100, 2),
    Layout("CIFAR-10 python", "cifar-10-batches-py", _batches(""), 10, 0),
    Layout("CIFAR-100 python", "cifar-100-python", {"train": ("train",), "val": ("test",)}, 100, 0),
)


def detect(root: Path) -> Layout:
    """The layout whose files are in `root` (the first found, if a folder mixes them)."""
    for layout in LAYOUTS:
        if any((root / name).is_file() for names in layout.files.values() for name in names):
            return layout
    folders = ", ".join(f"{layout.folder}/" for layout in LAYOUTS)
    raise UserError(f"{root} holds no CIFAR files; point --data.root at the extracted {folders} folder")


def read(root: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str], int]:
    """`(pixels, labels, names, num_classes)` of `split`: uint8 (N, 32, 32, 3) RGB images, int64 labels, and a
    name `file#record` per image for messages."""
    layout = detect(root)
    pixels, labels, names = [], [], []
    for name in layout.files[split]:
        path = root / name
        if not path.is_file():
            expected = ", ".join(layout.files["train"] + layout.files["val"])
            raise UserError(f"{path} not found: a {layout.name} folder holds {expected}; download it again")
        expected_images = IMAGES_PER_FILE[path.name.removesuffix(".bin")]
        if layout.label_bytes:
            file_pixels, file_labels = _read_binary(path, layout, expected_images)
        else:
            file_pixels, file_labels = _read_pickled(path, layout, expected_images)
        bad = np.flatnonzero((file_labels < 0) | (file_labels >= layout.num_classes))
        if len(bad):
            raise UserError(
                f"{path}: image {bad[0]} has label {file_labels[bad[0]]}, not one of the {layout.num_classes} "
                f"{layout.name} classes; the file is corrupt, download it again"
            )
        # Planar RGB rows -> HWC images, as decoded files are.
        pixels.append(file_pixels.reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1))
        labels.append(file_labels.astype(np.int64))
        names += [f"{path}#{i}" for i in range(len(file_labels))]
    return np.ascontiguousarray(np.concatenate(pixels)), np.concatenate(labels), names, layout.num_classes


def _read_binary(path: Path, layout: Layout, expected_images: int) -> tuple[np.ndarray, np.ndarray]:
    record = layout.label_bytes + PIXELS
    size = path.stat().st_size
    if size != expected_images * record:
        raise UserError(
            f"{path} has {size} bytes, not {expected_images} {layout.name} records of {record} bytes; "
            "it is truncated or corrupt, download it again"
        )
    records = np.fromfile(path, dtype=np.uint8).reshape(expected_images, record)
    return records[:, layout.label_bytes :], records[:, layout.label_bytes - 1]


def _read_pickled(path: Path, layout: Layout, expected_images: int) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        try:
            # `bytes`: the files were written by Python 2, whose strings (keys, array data) are bytes.
            batch = _CifarUnpickler(f, path).load()
        except UserError:
            raise
        except Exception as e:  # whatever a damaged pickle makes the unpickler trip over, the file is the cause
            raise UserError(
                f"cannot read {path} as a pickle ({e!r}); it is truncated or corrupt, download it again"
            ) from None
    entries = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()} if type(batch) is dict else {}
    data = entries.get("data")
    labels = np.asarray(entries.get(layout.label_key, []))
    if not (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.shape == (expected_images, PIXELS)
        and labels.shape == (expected_images,)
        and labels.dtype.kind in "iu"
    ):
        raise UserError(
            f"{path} is not a {layout.name} batch: expected a dict with b'data' (uint8, {expected_images} x {PIXELS}) "
            f"and b'{layout.label_key}' ({expected_images} integers); download it again"
        )
    return data, labels


def _numpy_globals() -> dict[tuple[str, str], object]:
    """The callables numpy's own pickles of arrays, dtypes and scalars name, under numpy 1.x's (`numpy.core`) and
    2.x's (`numpy._core`) module names. They are taken from numpy's reductions rather than imported by name, so
    either name loads with either numpy, without numpy's warning about `numpy.core`."""
    reconstruct = np.zeros(1).__reduce__()[0]
    from_buffer = np.zeros(1).__reduce_ex__(5)[0]
    scalar = np.float32(0).__reduce__()[0]
    allowed: dict[tuple[str, str], object] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for core in ("numpy.core", "numpy._core"):
        allowed[f"{core}.multiarray", "_reconstruct"] = reconstruct
        allowed[f"{core}.multiarray", "scalar"] = scalar
        allowed[f"{core}.numeric", "_frombuffer"] = from_buffer
    # Protocol 2 written by Python 3 stores bytes as `_codecs.encode(text, "latin1")`: it only turns text into bytes.
    allowed["_codecs", "encode"] = codecs.encode
    return allowed


class _CifarUnpickler(pickle.Unpickler):
    """Rebuilds only numpy arrays, dtypes and scalars besides the plain types pickle builds by itself (dict, list,
    tuple, bytes, str, numbers). Every other object a pickle can hold reaches it through `find_class`, which
    refuses it before anything is called."""

    ALLOWED = _numpy_globals()

    def __init__(self, file, path: Path) -> None:  # type: ignore[no-untyped-def]
        super().__init__(file, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str) -> object:
        allowed = self.ALLOWED.get((module, name))
        if allowed is None:
            raise UserError(
                f"{self.path} asks to load {module}.{name}, which no CIFAR file holds: refused, nothing in the file "
                "was run; use the original CIFAR files"
            )
        return allowed
