"""Does BlockDrop's per-image block skipping save real time? The policy-routed model vs the full ResNet.

Times, on this machine's CPU at batch 1 and batch 64, the policy-routed model (`RoutedNet`: the policy decides,
each block runs only on the images that keep it) against the full ResNet exported statically, on the same images,
and prints the realized speed-up beside the FLOPs speed-up of the same two (BlockDrop's convention, the policy's
FLOPs counted) and their ratio (goal: >= 0.85). The two run alternately, `--repeats` times over the same images;
each row reports the best time per batch of each (other processes can only add time) and their ratio.

    python scripts/bench_blockdrop.py --run D          # a trained run's exports (D/export/{dynamic,largest}...)
    python scripts/bench_blockdrop.py                  # synthetic: ResNet-110 with a policy keeping ~60% of blocks
    python scripts/bench_blockdrop.py --arch cifar_resnet32 --images 256 --repeats 7 --threads 2
"""

from __future__ import annotations

# isort: off
import dslim  # (first: sets torch's OpenMP wait policy as every dslim command does)

# isort: on

import argparse
import os
import time
from pathlib import Path

import torch

from dslim.deploy.extraction import extract_dynamic
from dslim.models import create_supernet


def synthetic(arch: str, keep_fraction: float, images: int) -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor]:
    """A ResNet with non-trivial BatchNorm statistics and a policy whose decisions vary over images and blocks,
    keeping about `keep_fraction` of the blocks; random images."""
    gen = torch.Generator().manual_seed(0)
    net = create_supernet(arch, block_policy=True)
    with torch.no_grad():
        for name, b in net.named_buffers():
            if name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=gen) + 0.5)
        head = net.policy.head
        head.weight.copy_(torch.randn(head.weight.shape, generator=gen))
        head.bias.fill_(0.0)
    x = torch.randn(images, 3, 32, 32, generator=gen)
    with torch.no_grad():
        net.eval()
        logits = torch.logit(net.policy(x)).double()
        shift = torch.quantile(logits.flatten(), 1 - keep_fraction)  # p >= 0.5 for that share of decisions
        net.policy.head.bias.sub_(float(shift))
    return extract_dynamic(net), dslim.extract(net, net.largest()), x


def from_run(run: Path, images: int) -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor]:
    """The run's exported dynamic model and full ResNet, and its first validation images."""
    from dslim.data import build_loader
    from dslim.stages.run import open_run

    config = open_run(run).config
    routed = dslim.load_subnet(run / "export" / "dynamic.safetensors")
    full = dslim.load_subnet(run / "export" / "largest.safetensors")
    loader = build_loader(config.data, "val", config.model.input_size)
    x = torch.cat([batch for batch, _ in loader])
    while len(x) < images:
        x = torch.cat([x, x])
    return routed, full, x[:images]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a trained BlockDrop run directory (with its export stage done)")
    parser.add_argument("--arch", default="cifar_resnet110", help="synthetic model's base (without --run)")
    parser.add_argument("--keep", type=float, default=0.6, help="synthetic policy's share of kept blocks")
    parser.add_argument("--images", type=int, default=128, help="images timed per repeat (a multiple of 64)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    routed, full, x = from_run(args.run, args.images) if args.run else synthetic(args.arch, args.keep, args.images)
    net, size = routed.net, x.shape[-1]
    keep = routed.route(x)
    costs = net.block_costs(size)
    full_flops = costs.fixed_flops + float(costs.block_flops.sum())
    routed_flops = float(costs.flops(keep).mean())
    flops_speedup = full_flops / routed_flops
    print(f"{net.arch}, {len(net.blocks)} blocks, {len(x)} images at {size}px, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    print(f"blocks per image {keep.sum(1).double().mean():.2f} of {keep.shape[1]}, "
          f"{len(torch.unique(keep, dim=0))} distinct policies")  # fmt: skip
    print(f"FLOPs/img: full ResNet {full_flops:.3E}, routed {routed_flops:.3E} (policy {costs.policy_flops:.3E}), "
          f"speed-up {flops_speedup:.3f}")  # fmt: skip
    print(f"{'batch':>5} {'full ms/batch':>14} {'routed ms/batch':>16} {'speed-up':>9} {'FLOPs speed-up':>15} "
          f"{'ratio':>6}")  # fmt: skip
    for batch in (1, 64):

        def run(model: torch.nn.Module, batch: int = batch) -> float:
            start = time.perf_counter()
            for i in range(0, len(x), batch):
                model(x[i : i + batch])
            return (time.perf_counter() - start) / (len(x) // batch)

        run(full), run(routed)  # warm-up
        times = [(run(full), run(routed)) for _ in range(args.repeats)]
        t_full, t_routed = min(t for t, _ in times), min(t for _, t in times)
        speedup = t_full / t_routed
        print(f"{batch:>5} {t_full * 1e3:>14.2f} {t_routed * 1e3:>16.2f} {speedup:>9.3f} {flops_speedup:>15.3f} "
              f"{speedup / flops_speedup:>6.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
