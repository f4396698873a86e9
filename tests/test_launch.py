"""Launches that would silently train alone or elsewhere are refused in one line with exit code 2, and the launch
files users copy (examples/launch/*.yaml, scripts/slurm_train.sbatch) are read by Accelerate's own loader and
launcher checks, so that they cannot rot."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import PYTHON, ROOT, subprocess_env

from dslim.errors import UserError
from dslim.training.launch import check_launch, check_world

CONFIGS = sorted((ROOT / "examples" / "launch").glob("*.yaml"))
TRAIN = ["-m", "dslim.train", "--recipe", "scale_digits", "--stages", "supernet"]


def refused(cmd: list[str], tmp_path: Path, cache: Path, **env: str) -> str:
    """Run a launch of a short training in `tmp_path`; what it printed on stderr (it must fail, and write
    nothing)."""
    out = tmp_path / "run"
    args = [*TRAIN, "--out-dir", str(out), "--data.cache-dir", str(cache)]
    done = subprocess.run([*cmd, *args], env=subprocess_env(**env), capture_output=True, text=True, timeout=300,
                          cwd=ROOT)  # fmt: skip
    assert done.returncode != 0, done.stdout[-2000:]
    assert not out.exists(), "a refused launch wrote its run directory"
    # the launchers print their own tracebacks when a process fails; dslim's refusal is its one line
    assert not re.search(r'File ".*/dslim/', done.stderr), done.stderr[-3000:]
    return done.stderr


@pytest.mark.slow
def test_torchrun_on_cpu_without_accelerate_use_cpu_is_refused(tmp_path, digits_cache):
    cmd = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    err = refused(cmd, tmp_path, digits_cache, ACCELERATE_USE_CPU="false")
    # both processes say it (their lines may interleave on the shared stderr)
    assert err.count("dslim: error: launched as 2 processes but Accelerate sees 1") == 2, err[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize(
    "flags",
    [["--num_processes", "2"], ["--cpu", "--config_file", str(ROOT / "examples/launch/ddp_2nodes.yaml")]],
    ids=["no-gpus", "cpu-with-multi-gpu-config"],
)
def test_accelerate_single_process_launcher_is_refused(tmp_path, digits_cache, flags):
    # Without GPUs, or with --cpu whatever the config file says, Accelerate runs one process for all of them.
    cmd = [PYTHON, "-m", "accelerate.commands.launch", *flags]
    err = refused(cmd, tmp_path, digits_cache)
    lines = [line for line in err.splitlines() if line.startswith("dslim: error:")]
    assert len(lines) == 1 and "started this one process although it was asked for several" in lines[0], err


def test_cpu_beside_gpus_is_refused():
    env = {"ACCELERATE_USE_CPU": "true", "WORLD_SIZE": "8"}
    with pytest.raises(UserError, match="train on the CPUs beside 8 GPUs"):
        check_launch(env, gpus=8, mixed_precision="no")
    check_launch(env, gpus=0, mixed_precision="no")  # CPUs only: what the tests do
    check_launch({"ACCELERATE_USE_CPU": "true"}, gpus=8, mixed_precision="no")  # one process on purpose


def test_launcher_precision_must_match_the_run():
    env = {"ACCELERATE_MIXED_PRECISION": "bf16"}
    with pytest.raises(UserError, match="pass --mixed-precision bf16"):
        check_launch(env, gpus=0, mixed_precision="no")
    check_launch(env, gpus=0, mixed_precision="bf16")
    check_launch({"ACCELERATE_MIXED_PRECISION": "no"}, gpus=0, mixed_precision="bf16")


def test_zero3_is_refused():
    from accelerate.utils import DistributedType

    plugin = SimpleNamespace(zero_stage=3)
    accelerator = SimpleNamespace(num_processes=1, distributed_type=DistributedType.DEEPSPEED,
                                  state=SimpleNamespace(deepspeed_plugin=plugin))  # fmt: skip
    with pytest.raises(UserError, match="ZeRO-3"):
        check_world(accelerator, {})  # type: ignore[arg-type]
    plugin.zero_stage = 2
    check_world(accelerator, {})  # type: ignore[arg-type]


def validated(argv: list[str]):  # type: ignore[no-untyped-def]
    """`accelerate launch argv` as Accelerate's launcher reads and checks it (config file and flags)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args, _, _ = _validate_launch_command(launch_command_parser().parse_args(argv))
    return args


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_launch_configs_parse_with_accelerate(path):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser
    from accelerate.utils import DistributedType

    config = load_config_from_file(str(path))
    assert config.num_machines >= 2 and config.num_processes % config.num_machines == 0
    assert config.main_process_ip and config.main_process_port and config.machine_rank == 0
    assert config.mixed_precision == "bf16" and not config.use_cpu
    args = validated(["--config_file", str(path), "--machine_rank", "1", "-m", "dslim.train"])
    assert args.machine_rank == 1 and args.num_machines == config.num_machines
    if config.distributed_type == DistributedType.DEEPSPEED:
        ds = config.deepspeed_config
        launch_flags = {action.dest for action in launch_command_parser()._actions}
        assert set(ds) <= launch_flags, set(ds) - launch_flags  # a misspelt key would be ignored silently
        assert ds["zero_stage"] in (1, 2)  # dslim refuses ZeRO-3
        assert "gradient_clipping" in ds  # DeepSpeed clips to 1.0 when it is missing
        assert ds["deepspeed_multinode_launcher"] == "standard"  # torchrun on every node, as the sbatch script does
        assert args.use_deepspeed and args.zero_stage == ds["zero_stage"]
    else:
        assert config.distributed_type == DistributedType.MULTI_GPU and args.multi_gpu


def test_slurm_script_launches_accelerate_once_per_node(tmp_path):
    """The sbatch script under stand-ins for srun, scontrol and accelerate (3 nodes): one `accelerate launch` per
    node, with the node's rank and SLURM's counts, whose arguments Accelerate's launcher accepts."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stand_ins = {
        "srun": 'for ((node = 0; node < SLURM_NNODES; node++)); do SLURM_NODEID=$node "${@:2}"; done',
        "scontrol": "printf 'gpu-a\\ngpu-b\\ngpu-c\\n'",
        "accelerate": 'printf "%q " "$@" >> "$CALLS"; echo >> "$CALLS"',
    }
    for name, body in stand_ins.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(tmp_path / "calls"),
           "SLURM_JOB_NODELIST": "gpu-[a-c]", "SLURM_NNODES": "3"}  # fmt: skip
    recipe = ["--recipe", "dsnet_mbv1", "--data.root", "/data/imagenet", "--out-dir", "runs/dsnet"]
    done = subprocess.run(["bash", "scripts/slurm_train.sbatch", *recipe], cwd=ROOT, env=env, capture_output=True,
                          text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    calls = [shlex.split(line) for line in (tmp_path / "calls").read_text().splitlines()]
    assert [c[0] for c in calls] == ["launch"] * 3
    for node, call in enumerate(calls):
        args = validated(call[1:])  # SLURM's counts override the config file's 2 machines
        assert (args.machine_rank, args.num_machines, args.num_processes) == (node, 3, 24)
        assert args.main_process_ip == "gpu-a" and args.module and args.training_script == "dslim.train"
        assert args.training_script_args == recipe
