"""Does ordering channels by importance help a converted model's narrower subnets start well?

    python scripts/bench_channel_order.py [--epochs 6] [--seeds 3] [--threads 1] [--out runs/my_cnn_digits.safetensors]

1. Pretrains `examples/my_cnn.py:MyCNN` as an ordinary network (plain PyTorch, SGD) on the built-in digits, the
   way a user's pretrained model comes about, once per seed (`--seeds`), and saves the first seed's weights (`--out`,
   for `--model.weights`).
2. Converts it three times: channels in the model's own order, ordered by BatchNorm scale (`bn`), ordered by the L1
   norm of their weights (`l1`). The largest subnet is the pretrained model in every case (checked by `convert`).
3. Before any slimmable training, calibrates each width's BatchNorm statistics on training batches and reports
   validation top-1 of widths 0.25 / 0.5 / 0.75 / 1.0 for each order, averaged over the seeds: how well a narrower
   subnet starts.

The digits' validation split is 360 images: a difference of one image is 0.28 points.
"""

from __future__ import annotations

# isort: off
import dslim  # noqa: F401  (first: sets torch's OpenMP wait policy as every dslim command does)

# isort: on

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dslim.data import build_loader
from dslim.evaluation.accuracy import evaluate
from dslim.evaluation.calibration import recalibrate
from dslim.models.convert import convert
from dslim.recipes import load

ROOT = Path(__file__).resolve().parents[1]
WIDTHS = (0.25, 0.5, 0.75, 1.0)


def pretrain(model: torch.nn.Module, data, epochs: int, lr: float) -> None:  # type: ignore[no-untyped-def]
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=1e-4)
    steps = epochs * len(build_loader(data, "train", 32))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.15)
    model.train()
    for epoch in range(epochs):
        for x, y in build_loader(data, "train", 32, epoch=epoch):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--calibrate", type=int, default=10, help="training batches per width for BN statistics")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/my_cnn_digits.safetensors")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT / "examples"))
    from my_cnn import MyCNN
    from safetensors.torch import save_file

    data = load("usnet_digits").data
    start = time.time()
    runs: dict[str, list[dict]] = {"original": [], "bn": [], "l1": []}
    example = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        model = MyCNN()
        pretrain(model, data, args.epochs, args.lr)
        if seed == 0:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, args.out)
        for order in runs:
            net = convert(model, example, widths=WIDTHS, width_range=(0.25, 1.0), bn="calibrated", channel_order=order)
            subnets = {repr(w): net.uniform(w) for w in WIDTHS}
            recalibrate(net, subnets, build_loader(data, "train", 32, seed=1), args.calibrate, show=False)
            found = evaluate(net, subnets, build_loader(data, "val", 32), 32)
            runs[order].append({r["subnet"]: r["top1"] for r in found})
    rows = {order: {w: round(sum(r[w] for r in rs) / len(rs), 2) for w in rs[0]} for order, rs in runs.items()}
    report = {"pretrain_epochs": args.epochs, "seeds": args.seeds, "threads": args.threads, "load": os.getloadavg()[0],
              "seconds": round(time.time() - start, 1), "weights": args.out, "top1": rows}  # fmt: skip
    if args.json:
        print(json.dumps(report))
        return
    print(f"MyCNN pretrained {args.epochs} epochs on digits, {args.seeds} seeds ({args.threads} thread(s), load "
          f"{report['load']:.1f}, {report['seconds']} s); mean validation top-1 (%) before any slimmable training, "
          f"BatchNorm calibrated per width:")  # fmt: skip
    print(f"{'channel order':<15}" + "".join(f"{w:>8}" for w in WIDTHS))
    for order, top1 in rows.items():
        print(f"{order:<15}" + "".join(f"{top1[repr(w)]:>8.2f}" for w in WIDTHS))
    print(f"weights: {args.out}")


if __name__ == "__main__":
    main()
