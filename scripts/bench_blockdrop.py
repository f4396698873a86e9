"""Does BlockDrop's per-image block skipping save real time? The deployed dynamic model vs the full ResNet, static.

Times, on this machine's CPU at batch 1 and batch 64, the deployed policy-routed model (`extract_dynamic`: the
policy decides, each block runs only on the images that keep it, every layer a plain static one) against the full
ResNet exported statically (`dslim.extract`), on the same images, and prints the realized speed-up beside the MAdds
speed-up of the same two (the policy's MAdds counted; BlockDrop's own FLOPs convention gives the same speed-up to
within a percent, printed too) and their ratio (goal: >= 0.9). The two alternate in one process
(`benchlib.timed_pair`: medians of per-repeat ratios, wall and CPU time); the whole measurement is made `--runs`
times in a row, and the last line says in how many every row met the goal.

    python scripts/bench_blockdrop.py                  # synthetic: ResNet-110 with a policy keeping ~60% of blocks
    python scripts/bench_blockdrop.py --run D          # a trained BlockDrop run (its last stage's supernet)
    python scripts/bench_blockdrop.py --arch cifar_resnet32 --images 256 --repeats 7 --threads 2
    python scripts/bench_blockdrop.py --runs 1 --breakdown   # then where the routed time goes: policy, blocks, routing
"""

from __future__ import annotations

# isort: off
import dslim  # (first: sets torch's OpenMP wait policy as every dslim command does)

# isort: on

import argparse
from pathlib import Path

import torch
from benchlib import breakdown, load, measure, weight_mb

from dslim.deploy.extraction import extract_dynamic
from dslim.models import create_supernet
from dslim.training import tune_allocator

GOAL = 0.9


def synthetic(arch: str, keep_fraction: float, images: int) -> tuple[torch.nn.Module, torch.Tensor]:
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
    return net, x


def from_run(run: Path, images: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """The run's supernet (its last finished stage) and its first validation images."""
    from dslim.data import build_loader
    from dslim.stages.run import open_run

    opened = open_run(run)
    loader = build_loader(opened.config.data, "val", opened.config.model.input_size)
    x = torch.cat([batch for batch, _ in loader])
    while len(x) < images:
        x = torch.cat([x, x])
    return opened.supernet.eval(), x[:images]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a trained BlockDrop run directory")
    parser.add_argument("--arch", default="cifar_resnet110", help="synthetic model's base (without --run)")
    parser.add_argument("--keep", type=float, default=0.6, help="synthetic policy's share of kept blocks")
    parser.add_argument("--images", type=int, default=128, help="images timed per repeat (a multiple of 64)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--runs", type=int, default=3, help="whole measurements in a row")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--breakdown", action="store_true", help="then time the routed model graph by graph")
    args = parser.parse_args()
    tune_allocator()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    net, x = from_run(args.run, args.images) if args.run else synthetic(args.arch, args.keep, args.images)
    size = x.shape[-1]
    routed, full = extract_dynamic(net, size), dslim.extract(net, net.largest())
    keep = routed.route(x)
    costs = net.block_costs(size)
    macs_speedup = (costs.fixed_macs + float(costs.block_macs.sum())) / float(costs.macs(keep).mean())
    flops_speedup = (costs.fixed_flops + float(costs.block_flops.sum())) / float(costs.flops(keep).mean())
    print(f"{net.arch}, {len(net.blocks)} blocks, {len(x)} images at {size}px, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s), load {load()}")  # fmt: skip
    print(f"blocks per image {keep.sum(1).double().mean():.2f} of {keep.shape[1]}, "
          f"{len(torch.unique(keep, dim=0))} distinct policies; MAdds speed-up {macs_speedup:.3f} "
          f"(BlockDrop's FLOPs: {flops_speedup:.3f})")  # fmt: skip
    print(f"weights: deployed dynamic model {weight_mb(routed):.1f} MB (policy included), full ResNet "
          f"{weight_mb(full):.1f} MB")  # fmt: skip
    measure([(net.arch, full, routed, x, macs_speedup)], args.runs, args.repeats, GOAL)
    if args.breakdown:  # graphs named `block-K` are grouped as one kind
        groups = [(1, [x[i : i + 1] for i in range(32)]), (64, [x[i : i + 64] for i in range(0, len(x), 64)])]
        breakdown(routed, full, groups, args.repeats, kind=lambda name: name.rsplit("-", 1)[0])


if __name__ == "__main__":
    main()
