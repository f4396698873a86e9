"""Training-pipeline throughput: DALI on the CPU against the PIL + DataLoader fallback, same transforms.

Writes ImageNet-like JPEGs (500x375, smooth random content) as an ImageFolder in a temporary folder, then runs
`build_loader(..., "train", 224)` with each backend and the same number of threads/workers:

    python scripts/bench_data.py [--images 400] [--workers 2] [--batch-size 32] [--epochs 3]
    python scripts/bench_data.py --stall [--workers 2]   # does the loader stall training?

`--stall` asks whether the loader keeps a training step fed: it times MobileNet v1 training steps (forward,
backward, SGD; torch's default threads) fed by the real loader (DALI CPU and PIL) against the same steps on
batches already in memory, on the built-in digits (32px, batch 64, like `dsnet_digits`) and on the JPEGs
(224px, width 0.25, batch 32). The ratio real / in-memory is the loader's cost to training (goal <= 1.05); on
2 cores the loader's threads take CPU the step would otherwise use, so this is what the `workers` default is
chosen by. Epochs alternate between the three feeds.

Each epoch builds a fresh pipeline (as training does); images/s leave out each epoch's first batches (warm-up);
CPU ms/image (all threads and worker processes, whole epoch, best epoch) is the cost that matters on a busy
machine, where wall-clock rates also depend on other load.
"""

from __future__ import annotations

# isort: off
import dslim  # noqa: F401  (first: sets torch's OpenMP wait policy as every dslim command does)

# isort: on

import argparse
import dataclasses
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dslim.config import DataConfig
from dslim.data import build_loader

WARMUP_BATCHES = 2


def write_images(root: Path, count: int, classes: int = 10, seed: int = 0) -> None:
    """JPEGs of smooth noise: coarse random colors upsampled bicubically plus a little grain, like photo content."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        coarse = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        image = np.asarray(Image.fromarray(coarse).resize((500, 375), Image.BICUBIC), dtype=np.int16)
        image = np.clip(image + rng.integers(-8, 9, image.shape), 0, 255).astype(np.uint8)
        folder = root / "train" / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:05d}.jpg", quality=90)


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (DataLoader workers are joined at the end of an epoch)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed_epoch(cfg: DataConfig, image_size: int, epoch: int) -> tuple[int, float, float]:
    """(images after the warm-up, their wall seconds, CPU seconds per image over the whole epoch) of one epoch."""
    images, total, cpu = 0, 0, cpu_seconds()
    for i, (batch, _) in enumerate(build_loader(cfg, "train", image_size, epoch=epoch)):
        total += len(batch)
        if i == WARMUP_BATCHES:
            start = time.perf_counter()
        elif i > WARMUP_BATCHES:
            images += len(batch)
    return images, time.perf_counter() - start, (cpu_seconds() - cpu) / total


def stall_rows(cfg: DataConfig, size: int, width: float, classes: int, epochs: int) -> dict[str, float]:
    """Median ms per training step fed by each loader and from memory (same batches, same model)."""
    from dslim.models import create_supernet

    torch.manual_seed(0)
    net = create_supernet("mobilenet_v1", num_classes=classes, widths=(width,), max_width=width).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()

    memory = [(x.clone(), y.clone()) for x, y in build_loader(cfg, "train", size, epoch=0)]
    feeds = {
        "memory": lambda epoch: iter(memory),
        "dali": lambda epoch: iter(build_loader(dataclasses.replace(cfg, loader="dali"), "train", size, epoch=epoch)),
        "pil": lambda epoch: iter(build_loader(dataclasses.replace(cfg, loader="pil"), "train", size, epoch=epoch)),
    }
    for x, y in memory[:WARMUP_BATCHES]:
        step(x, y)
    times: dict[str, list[float]] = {name: [] for name in feeds}
    for epoch in range(1, epochs + 1):
        for name, feed in feeds.items():
            batches, start, steps = feed(epoch), 0.0, 0
            for i, (x, y) in enumerate(batches):
                if i == WARMUP_BATCHES:  # each epoch's pipeline start-up is not a stall of training
                    start = time.perf_counter()
                step(x, y)
                steps += i >= WARMUP_BATCHES
            times[name].append((time.perf_counter() - start) / steps)
    return {name: 1000 * min(t) for name, t in times.items()}


def print_stall(title: str, ms: dict[str, float]) -> None:
    print(f"  {title}: in memory {ms['memory']:.1f} ms/step; DALI {ms['dali']:.1f} ({ms['dali'] / ms['memory']:.3f}x),"
          f" PIL {ms['pil']:.1f} ({ms['pil'] / ms['memory']:.3f}x)")  # fmt: skip


def stall(args: argparse.Namespace) -> None:
    import os

    print(f"training steps fed by the loader vs from memory, {args.workers} loader threads/workers, torch "
          f"{torch.get_num_threads()} threads, best epoch of {args.epochs}, load {os.getloadavg()[0]:.1f}")  # fmt: skip
    digits = DataConfig(root="digits", workers=args.workers, batch_size=64, flip=False, random_area=(0.64, 1.0))
    print_stall("digits 32px, MobileNet v1 x1.0, batch 64", stall_rows(digits, 32, 1.0, 10, args.epochs))
    with tempfile.TemporaryDirectory(prefix="dslim-bench-") as tmp:
        write_images(Path(tmp), args.images)
        (Path(tmp) / "val").mkdir()
        jpegs = DataConfig(root=tmp, workers=args.workers, batch_size=args.batch_size)
        print_stall(f"JPEGs 224px, MobileNet v1 x0.25, batch {args.batch_size}",
                    stall_rows(jpegs, 224, 0.25, 10, args.epochs))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--workers", type=int, default=2, help="DALI threads = DataLoader workers")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--stall", action="store_true", help="training steps fed by the loader vs from memory")
    args = parser.parse_args()
    if args.stall:
        from dslim.training import tune_allocator

        tune_allocator()  # as every dslim command does
        stall(args)
        return
    if args.images // args.batch_size <= WARMUP_BATCHES + 1:
        parser.error(f"--images must give more than {WARMUP_BATCHES + 1} batches")

    with tempfile.TemporaryDirectory(prefix="dslim-bench-") as tmp:
        start = time.perf_counter()
        write_images(Path(tmp), args.images)
        print(f"wrote {args.images} JPEGs 500x375 in {time.perf_counter() - start:.1f}s")
        # The training split is all the benchmark reads; an empty val/ only satisfies the layout check.
        (Path(tmp) / "val").mkdir()
        cfg = DataConfig(root=tmp, workers=args.workers, batch_size=args.batch_size)
        runs: dict[str, list[tuple[int, float, float]]] = {"dali": [], "pil": []}
        # Epochs alternate between the backends so that other load on the machine slows both alike.
        for epoch in range(args.epochs):
            for name, epochs in runs.items():
                epochs.append(timed_epoch(dataclasses.replace(cfg, loader=name), args.image_size, epoch))
    rate = {name: sum(e[0] for e in epochs) / sum(e[1] for e in epochs) for name, epochs in runs.items()}
    cpu_ms = {name: 1000 * min(e[2] for e in epochs) for name, epochs in runs.items()}
    print(
        f"train pipeline (decode + random resized crop {args.image_size} + flip + normalize), "
        f"batch {args.batch_size}, {args.workers} threads/workers, {args.epochs} epochs:"
    )
    for name in runs:
        print(f"  {name:5s} {rate[name]:7.1f} images/s   {cpu_ms[name]:5.2f} CPU ms/image")
    print(f"  dali/pil: {rate['dali'] / rate['pil']:.2f}x images/s, {cpu_ms['pil'] / cpu_ms['dali']:.2f}x less CPU")


if __name__ == "__main__":
    main()
