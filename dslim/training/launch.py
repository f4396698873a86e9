"""The job the launcher asked for, or a one-line refusal: launches that would silently train alone or elsewhere.

Each of these runs without an error and trains something else than what was asked (docs/scale.md has the table):
- `torchrun --nproc-per-node N` on CPUs without `ACCELERATE_USE_CPU=true`: each process trains alone (the launcher
  says N, Accelerate sees 1);
- `accelerate launch --num_processes N` on a machine without GPUs, or with `--cpu` (also beside a multi-GPU or
  DeepSpeed config file): Accelerate's single-process launcher starts this one process, which trains alone;
- `ACCELERATE_USE_CPU=true` (`accelerate launch --cpu`) with several processes beside GPUs: they train on the CPUs;
- `accelerate launch --mixed_precision bf16` (or its config file's) with a run whose `--mixed-precision` differs:
  dslim passes its own to Accelerate, which then ignores the launcher's;
- DeepSpeed with `ACCELERATE_USE_CPU=true`: Accelerate drops DeepSpeed; ZeRO-3: dslim slices, calibrates and saves
  parameters outside the engine's forward, where ZeRO-3 has partitioned them away.
`check_launch` refuses them from the environment before any process group exists, `check_world` from the
Accelerator after, where one all-gather also checks that the processes hold distinct ranks.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from dslim.errors import UserError

WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
"""Where launchers put the number of processes (torchrun, then MPI's), as Accelerate reads it."""
CPU_HOW_TO = "on CPUs run ACCELERATE_USE_CPU=true torchrun --nproc-per-node N ... (docs/scale.md)"


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").lower() in ("1", "true", "yes")


def launched_processes(env: Mapping[str, str]) -> int | None:
    """The number of processes the launcher started, if it said."""
    for name in WORLD_SIZE_VARIABLES:
        if name in env:
            return int(env[name])
    return None


def check_launch(env: Mapping[str, str], gpus: int, mixed_precision: str) -> None:
    """Refuse, from the environment alone, the launches listed in the module docstring; `gpus`: CUDA devices
    visible, `mixed_precision`: the run's `--mixed-precision`."""
    cpu, deepspeed = _flag(env, "ACCELERATE_USE_CPU"), _flag(env, "ACCELERATE_USE_DEEPSPEED")
    launched = launched_processes(env)
    if deepspeed and cpu:
        raise UserError("ACCELERATE_USE_CPU=true turns DeepSpeed off silently: unset it to run DeepSpeed on a CPU")
    # Accelerate's single-process launcher sets MASTER_PORT only when asked for several processes or machines.
    if launched is None and "MASTER_PORT" in env and "ACCELERATE_DYNAMO_BACKEND" in env:
        raise UserError(
            "accelerate launch started this one process although it was asked for several (without GPUs or with "
            "--cpu it runs its single-process launcher, whatever --num_processes or the config file say): on GPUs "
            f"drop --cpu and pass --multi_gpu or a config file; {CPU_HOW_TO}"
        )
    asked = env.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if asked not in ("no", mixed_precision):
        raise UserError(
            f"the launcher asks for mixed precision {asked} (accelerate launch --mixed_precision or its config file) "
            f"but the run's is {mixed_precision}, which Accelerate would follow silently: pass --mixed-precision "
            f"{asked} to dslim as well (config.json records it), or launch without it"
        )
    if cpu and gpus and (launched or 1) > 1:
        raise UserError(
            f"ACCELERATE_USE_CPU=true (accelerate launch --cpu) makes these {launched} processes train on the CPUs "
            f"beside {gpus} GPUs: unset it to train on the GPUs, or hide them (CUDA_VISIBLE_DEVICES=) to mean it"
        )


def check_world(accelerator: Accelerator, env: Mapping[str, str]) -> None:
    """The Accelerator has as many processes as were launched, each with its own rank, and no ZeRO-3. Every process
    of a multi-process run then says who it is in one line on stderr (`dslim: process 1 of 16 (node 0, local rank 1,
    nccl, restart 0)`): a node that did not join, or joined twice, shows at once."""
    launched = launched_processes(env) or 1
    n = accelerator.num_processes
    if n != launched:
        raise UserError(
            f"launched as {launched} processes but Accelerate sees {n}: each would train alone; on CPU set "
            "ACCELERATE_USE_CPU=true (DDP) or ACCELERATE_USE_DEEPSPEED=true (DeepSpeed)"
        )
    if accelerator.distributed_type == DistributedType.DEEPSPEED and accelerator.state.deepspeed_plugin.zero_stage == 3:
        raise UserError(
            "DeepSpeed ZeRO-3 partitions the parameters that dslim slices, calibrates and saves outside the engine's "
            "forward (its artifacts would hold empty tensors): use ZeRO stage 1 or 2 (docs/scale.md)"
        )
    if n == 1:
        return
    ranks = accelerator.gather(torch.tensor([accelerator.process_index], device=accelerator.device)).tolist()
    if sorted(ranks) != list(range(n)):
        raise UserError(f"the {n} processes hold ranks {sorted(ranks)}, not 0 .. {n - 1}: check the launcher's "
                        "--node-rank / machine_rank of each node")  # fmt: skip
    where = [f"node {env['GROUP_RANK']}"] if "GROUP_RANK" in env else []
    where += [f"local rank {accelerator.local_process_index}", torch.distributed.get_backend()]
    if "TORCHELASTIC_RESTART_COUNT" in env:
        where.append(f"restart {env['TORCHELASTIC_RESTART_COUNT']}")
    print(f"dslim: process {accelerator.process_index} of {n} ({', '.join(where)})", file=sys.stderr, flush=True)
    restarts = int(env.get("TORCHELASTIC_MAX_RESTARTS", "0"))
    if accelerator.is_main_process and restarts and env.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        print("dslim: warning: torchrun's shared rendezvous store cannot reconnect the processes after a restart "
              "(pytorch/pytorch#135712, #167288): start torchrun with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1",
              file=sys.stderr, flush=True)  # fmt: skip
