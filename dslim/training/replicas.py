"""Every process holds the same parameters: checked by digest whenever a stage writes what it computed.

Under DDP and DeepSpeed the replicas of a network's parameters are equal to the bit; a parameter set updated on one
process only, a process that trained alone or a rank that read another's shard would make them differ, and the
artifact (written by the main process) would hide it. So each process hashes what it holds, one all-gather compares
the hashes, and a difference stops the run. Buffers are left out: DDP's BatchNorm statistics are each process's own
until the next forward broadcasts rank 0's. The digest is printed, so that runs can be compared at a glance (two
runs agree to the bit only with the same number of processes: the order of summation differs otherwise).
"""

from __future__ import annotations

import hashlib

import torch
from accelerate import Accelerator
from torch import nn


def parameter_digest(net: nn.Module) -> str:
    """sha256 of every parameter's name, dtype, shape and values, in name order."""
    h = hashlib.sha256()
    for name, p in sorted(net.named_parameters()):
        t = p.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def agree(accelerator: Accelerator, what: str, digest: str) -> str:
    """`what` (its `digest`) as every process holds it, or a RuntimeError if processes differ; returns the line to
    print."""
    n = accelerator.num_processes
    if n == 1:
        return f"{what} {digest[:16]}"
    mine = torch.tensor([int(digest[:15], 16)], dtype=torch.int64, device=accelerator.device)
    held = accelerator.gather(mine).tolist()
    if len(set(held)) > 1:
        raise RuntimeError(f"the processes hold different {what}: digests {[f'{d:015x}' for d in held]}")
    return f"{what} {digest[:16]}, the same on all {n} processes"
