"""Dynamic models deployed on onnxruntime: the dynamic ONNX folder vs the static widest route's ONNX graph.

For DS-Net (`ds_mobilenet_v1` at 224px, the gate fitted so 64 images spread over its 4 routes, as
`bench_dynamic.py`) and BlockDrop (the synthetic ResNet-110 of `bench_blockdrop.py`, its policy keeping ~60% of
the blocks), exports the dynamic model as a folder (`dslim.deploy.onnx.export_dynamic`) and its widest route as one
graph (`export_static`: DS-Net's `uniform-3`, BlockDrop's full ResNet), loads both with the torch-free runner
(`dslim.deploy.runtime.load`: every session created once; the batch grouped by decision, each group's graph run
once; a BlockDrop route's chain of block graphs composed into one graph, compiled on first use) and times them side
by side at batch 1 and 64 with `--threads` onnxruntime threads. Prints speed-up / MAdds speed-up (goal: >= 0.9;
the MAdds of the PyTorch model, router included) for each row, the runner's compiled routes and what the folder
holds, and in how many of `--runs` consecutive measurements every row met the goal. The warm-up pass compiles the
routes the images take; their compile time is printed apart.

    python scripts/bench_deploy.py [--repeats 7] [--runs 3] [--threads 1] [--exporter torchscript|dynamo]
"""

from __future__ import annotations

# isort: off
import dslim  # noqa: F401  (first: sets torch's OpenMP wait policy as every dslim command does)

# isort: on

import argparse
import tempfile
import time
from pathlib import Path

import torch
from bench_blockdrop import synthetic
from bench_dynamic import calibrated_dsnet, dsnet_macs_speedup, spread_gate
from benchlib import load, measure

from dslim.deploy import runtime
from dslim.deploy.onnx import export_dynamic, export_static
from dslim.training import tune_allocator

GOAL = 0.9


def dsnet(size: int) -> tuple[torch.nn.Module, torch.Tensor, float]:
    """The DS-Net, its 64 images and the MAdds speed-up of routing them."""
    net = calibrated_dsnet(size)
    x = torch.randn(64, 3, size, size)
    spread_gate(net, x)
    return net, x, dsnet_macs_speedup(net, net.forward_routed(x)[1], size)


def blockdrop(images: int) -> tuple[torch.nn.Module, torch.Tensor, float]:
    """The synthetic BlockDrop ResNet-110, its images and the MAdds speed-up of routing them."""
    net, x = synthetic("cifar_resnet110", 0.6, images)
    costs = net.block_costs(x.shape[-1])
    keep = net.forward_routed(x)[1]
    return net, x, (costs.fixed_macs + float(costs.block_macs.sum())) / float(costs.macs(keep).mean())


def megabytes(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.iterdir() if f.suffix == ".onnx") / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--runs", type=int, default=3, help="whole measurements in a row")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads per session")
    parser.add_argument("--exporter", choices=["torchscript", "dynamo"], default="torchscript")
    parser.add_argument("--size", type=int, default=224, help="DS-Net's image size")
    args = parser.parse_args()
    tune_allocator()
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    import onnxruntime

    models = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (net, x, macs_speedup) in (("ds_mobilenet_v1", dsnet(args.size)), ("cifar_resnet110", blockdrop(64))):
            folder, static = Path(tmp) / name, Path(tmp) / f"{name}-widest.onnx"
            began = time.perf_counter()
            export_dynamic(net, folder, x.shape[-1], args.exporter)
            export_static(net, net.route_subnets()[-1], static, x.shape[-1], args.exporter)
            dynamic = runtime.load(folder, args.threads)
            images = x.numpy()
            compile_began = time.perf_counter()
            dynamic(images)  # compiles the routes these images take
            compiled = time.perf_counter() - compile_began
            stats = dynamic.routes.stats
            print(f"{name}: exported in {time.perf_counter() - began - compiled:.1f} s; folder {megabytes(folder):.1f} "
                  f"MB ({len(dynamic.graphs)} graphs) against {static.stat().st_size / 2**20:.1f} MB for the widest "
                  f"route; {stats['compiled']} routes compiled in {compiled:.2f} s, holding "
                  f"{stats['bytes'] / 2**20:.1f} MB of weights; MAdds speed-up {macs_speedup:.3f}")  # fmt: skip
            models.append((name, runtime.load(static, args.threads), dynamic, images, macs_speedup))
        print(f"onnxruntime {onnxruntime.__version__}, {args.threads} thread(s) per session, exporter {args.exporter}, "
              f"load {load()}")  # fmt: skip
        measure(models, args.runs, args.repeats, GOAL)


if __name__ == "__main__":
    main()
