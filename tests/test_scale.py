"""Two nodes on one machine: two `torchrun` agents (`--nnodes 2`, one process each, gloo, c10d rendezvous on
127.0.0.1) run the `scale_digits` pipeline, whose stages synchronize processes in every way dslim has: a sandwich
supernet stage (DDP), AutoSlim's search (candidates spread over processes, scores summed), DMCP (weights under DDP,
Markov alphas reduced by the loop), BatchNorm recalibration (statistics summed) and BlockDrop's policy stage
(REINFORCE with sampled masks). These are the commands of docs/scale.md.

- Every process says which of the two it is, and every stage's weights hash the same on both (dslim checks it
  itself, `dslim.training.replicas`; the logs show it).
- Each stage equals the same stage run by one process with the same global batch (`global_batch`: it accumulates the two
  processes' micro-batches), started from the same input, to the tolerance of tests/test_distributed.py. Started from
  the two-node run's previous artifact rather than the reference's own: rounding differences of one stage (1e-7) grow to
  1e-4 over the next stage's steps on this small network (measured), and that growth would say nothing about
  synchronization.
- Elastic: with `--max-restarts 1`, one node's worker is killed (SIGKILL) mid-stage; both agents restart their
  workers, which resume from the last complete checkpoint and end with exactly the weights of the uninterrupted run,
  no temporary file left.
- Data: every training image is read exactly once per epoch over the two nodes, ImageFolder and WebDataset, and the
  held-out images never.

Run as a script (`python tests/test_scale.py OUT`), this file is the data worker the two agents start.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from conftest import PYTHON, subprocess_env
from safetensors.torch import load_file

RECIPE = ["--recipe", "scale_digits"]
STAGES = ["supernet", "search", "dmcp", "bn_recalibration", "policy"]
TRAINED = ["supernet", "dmcp", "bn_recalibration", "policy"]
# The one-process reference of a two-process stage: the recipe fixes each training stage's global batch (one process
# accumulates the two processes' micro-batches); BatchNorm calibration counts its batches per process.
ONE_PROCESS = {"bn_recalibration": ["--stages.bn-recalibration.batches", "4"]}
# Each reference run: its stages, and the two-node stages copied in first as its input (with the run's record, so
# that the reference continues that run; only the settings of stages it has not started may differ).
REFERENCES = [(["supernet"], []), (["search", "dmcp"], ["supernet"]),
              (["bn_recalibration", "policy"], ["supernet", "search", "dmcp"])]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(run_id: str, port: int) -> list[str]:
    """One node's agent of a 2-node job (the command of docs/scale.md)."""
    return [PYTHON, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", run_id, "--max-restarts", "1"]  # fmt: skip


@contextmanager
def two_nodes(args: list[str], logs: Path, run_id: str):  # type: ignore[no-untyped-def]
    """Start the two agents (each its own process group, so that nothing outlives a failed test); yields them."""
    port = free_port()
    env = subprocess_env(ACCELERATE_USE_CPU="true", TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1")
    agents = []
    try:
        for node in range(2):
            out = open(logs / f"{run_id}-node{node}.log", "w")
            agents.append(subprocess.Popen([*torchrun(run_id, port), *args], env=env, stdout=out,
                                           stderr=subprocess.STDOUT, start_new_session=True))  # fmt: skip
        yield agents
    finally:
        for agent in agents:
            if agent.poll() is None:
                os.killpg(agent.pid, signal.SIGKILL)
            agent.wait()


def finish(agents: list[subprocess.Popen], logs: Path, run_id: str, timeout: float = 600) -> list[str]:
    """Wait for both agents; their logs."""
    deadline = time.time() + timeout
    for agent in agents:
        agent.wait(timeout=max(1.0, deadline - time.time()))
    texts = [(logs / f"{run_id}-node{node}.log").read_text() for node in range(2)]
    for agent, text in zip(agents, texts):
        assert agent.returncode == 0, text[-4000:]
    return texts


def pipeline(out: Path, *extra: str) -> list[str]:
    return ["-m", "dslim.train", *RECIPE, "--out-dir", str(out), "--stages.dmcp.checkpoint-every", "1", *extra]


@pytest.fixture(scope="module")
def two_node_run(tmp_path_factory: pytest.TempPathFactory, digits_cache: Path) -> tuple[Path, list[str]]:
    """The uninterrupted two-node run: its directory and both nodes' logs."""
    tmp = tmp_path_factory.mktemp("two-nodes")
    start = time.perf_counter()
    with two_nodes(pipeline(tmp / "run", "--data.cache-dir", str(digits_cache)), tmp, "straight") as agents:
        logs = finish(agents, tmp, "straight")
    print(f"two-node scale_digits: {time.perf_counter() - start:.1f} s")
    return tmp / "run", logs


def digests(log: str) -> dict[str, str]:
    """Each stage's parameters (or subnets) digest as a node printed it, checked to be the same on both processes."""
    found = {}
    for line in log.splitlines():
        stage, _, rest = line.partition(": ")
        if stage in STAGES and rest.startswith(("parameters ", "subnets ")):
            assert rest.endswith("the same on all 2 processes"), line
            found[stage] = rest.split()[1].rstrip(",")
    return found


def assert_close_artifacts(ours: Path, reference: Path, stage: str) -> float:
    """Every floating tensor of the stage's artifact within tests/test_distributed.py's tolerance, every integer one
    equal; returns the largest difference."""
    a, b = load_file(ours / stage / "model.safetensors"), load_file(reference / stage / "model.safetensors")
    assert a.keys() == b.keys(), stage
    worst = 0.0
    for k in a:
        if a[k].dtype.is_floating_point:
            torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=1e-4, msg=f"{stage}: {k}")
            worst = max(worst, (a[k] - b[k]).abs().max().item())
        else:
            assert torch.equal(a[k], b[k]), f"{stage}: {k}"
    return worst


def dmcp_alphas(path: Path) -> torch.Tensor:
    from dslim.io.artifacts import load_tensors

    chains = load_tensors(path)[1]["dmcp"]["chains"]
    return torch.tensor([a for group in sorted(chains) for a in chains[group]["alpha"]])


@pytest.mark.slow
def test_two_nodes_match_one_process(two_node_run, tmp_path, digits_cache):
    run, logs = two_node_run
    processes = sorted(int(line.split()[2]) for log in logs for line in log.splitlines()
                       if line.startswith("dslim: process ") and " of 2 (node " in line)  # fmt: skip
    assert processes == [0, 1], logs[0][-2000:]
    assert digests(logs[0]) == digests(logs[1]) and set(digests(logs[0])) == set(STAGES)
    print("two-node digests:", digests(logs[0]))

    start = time.perf_counter()
    for stages, inputs in REFERENCES:
        ref = tmp_path / "-".join(stages)
        for stage in inputs:
            shutil.copytree(run / stage, ref / stage, ignore=shutil.ignore_patterns("state"))
        for record in (".dslim", "config.json") if inputs else ():
            shutil.copy(run / record, ref / record)
        one_process = [flag for stage in stages for flag in ONE_PROCESS.get(stage, [])]
        cmd = [PYTHON, *pipeline(ref, "--stages", *stages, *one_process, "--data.cache-dir", str(digits_cache))]
        done = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        print(done.stdout)
        for stage in stages:
            if stage == "search":
                ours, theirs = (json.loads((r / "search" / "subnets.json").read_text()) for r in (run, ref))
                losses = [(ours[n].pop("holdout_loss"), theirs[n].pop("holdout_loss")) for n in ours]
                assert ours == theirs and all(abs(x - y) < 1e-6 for x, y in losses)
            else:
                print(f"{stage}: largest difference to one process {assert_close_artifacts(run, ref, stage):.2g}")
            if stage == "dmcp":  # DMCP's second parameter set, the Markov chains' alphas, travels as metadata
                ours, theirs = (dmcp_alphas(r / "dmcp" / "model.safetensors") for r in (run, ref))
                torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-4)
                print(f"dmcp alphas: largest difference to one process {(ours - theirs).abs().max().item():.2g}")
    print(f"one-process references: {time.perf_counter() - start:.1f} s")

    # Every training stage trained something: the checks above could not pass on untouched weights.
    before = {"supernet": None, "dmcp": "supernet", "policy": "bn_recalibration"}
    for stage, previous in before.items():
        if previous is not None:
            a, b = (load_file(run / s / "model.safetensors") for s in (stage, previous))
            assert any(not torch.equal(a[k], b[k]) for k in a if k in b), stage


@pytest.mark.slow
def test_elastic_restart_resumes_to_the_same_weights(two_node_run, tmp_path, digits_cache):
    from dslim.io import is_temporary

    straight, _ = two_node_run
    run = tmp_path / "run"
    start = time.perf_counter()
    checkpoint = run / "dmcp" / "state" / "ckpt-000000001"
    with two_nodes(pipeline(run, "--data.cache-dir", str(digits_cache)), tmp_path, "elastic") as agents:
        deadline = time.time() + 300
        while not checkpoint.is_dir():
            assert all(a.poll() is None for a in agents) and time.time() < deadline, "no dmcp checkpoint"
            time.sleep(0.01)
        import psutil

        victims = psutil.Process(agents[1].pid).children()
        for worker in victims:
            worker.send_signal(signal.SIGKILL)
        killed_mid_stage = not (run / "dmcp" / "model.safetensors").exists()
        logs = finish(agents, tmp_path, "elastic")
    print(f"elastic two-node run with a restart: {time.perf_counter() - start:.1f} s")
    assert victims and killed_mid_stage, "killed too late: the dmcp stage had finished"
    for log in logs:
        assert "dmcp: resuming from" in log and "ckpt-000000001" in log, log[-3000:]
    assert "restart 1)" in logs[1], logs[1][-3000:]
    for line in (line for log in logs for line in log.splitlines()):
        if line.startswith(("dslim: process", "dmcp: resuming from")) or "will restart worker group" in line:
            print(line)
    for stage in TRAINED:
        a, b = (load_file(r / stage / "model.safetensors") for r in (straight, run))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), stage
    assert (run / "search" / "subnets.json").read_text() == (straight / "search" / "subnets.json").read_text()
    assert [p for p in run.rglob(".*") if is_temporary(p)] == []


# -- data ---------------------------------------------------------------------------------------------------------
IMAGES, HELD_OUT, BATCH = 61, 5, 4
"""61 training images, 5 of them held out: 56 = 2 processes x 7 batches of 4, so an epoch reads every image."""


def identity_images(root: Path) -> None:
    """An ImageFolder (2 classes) whose image i is a flat colour encoding i, and the same images as WebDataset
    shards: whatever crop or flip a loader applies, the pixels still say which image it was."""
    from PIL import Image

    for split, count in (("train", IMAGES), ("val", 13)):
        for i in range(count):
            folder = root / "folder" / split / f"c{i % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (12, 12), (i, 100 + i % 2, 7)).save(folder / f"{i:03d}.png")
        files = sorted((root / "folder" / split).glob("*/*.png"))
        (root / "wds").mkdir(exist_ok=True)
        for s in range(2):  # two shards, each a mix of both classes
            with tarfile.open(root / "wds" / f"{split}-{s:04d}.tar", "w") as tar:
                for f in files[s::2]:
                    tar.add(f, arcname=f"{f.stem}.png")
                    cls = root / f"{f.stem}.cls"
                    cls.write_text(f.parent.name[1:])
                    tar.add(cls, arcname=f"{f.stem}.cls")
                    cls.unlink()


def worker(root: str) -> None:
    """One process of the data job: the images it reads, per format, split and epoch, into `root/read-<rank>.json`."""
    from dslim.config import DataConfig
    from dslim.data import build_loader, holdout_indices
    from dslim.training import make_accelerator

    acc = make_accelerator()
    read: dict[str, list[int]] = {}
    common = dict(batch_size=BATCH, eval_batch_size=BATCH, workers=1, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                  cache_dir=f"{root}/cache")  # fmt: skip
    formats = {"folder": DataConfig(root=f"{root}/folder", holdout=HELD_OUT, **common),
               "webdataset": DataConfig(root=f"{root}/wds", format="webdataset", **common)}  # fmt: skip
    for name, cfg in formats.items():
        for split, epochs in (("train", (0, 1)), ("val", (0,))):
            for epoch in epochs:
                loader = build_loader(cfg, split, 8, shard_id=acc.process_index, num_shards=acc.num_processes,
                                      epoch=epoch)  # fmt: skip
                ids = [round(float(v) * 255) for images, _ in loader for v in images[:, 0, 4, 4]]
                read[f"{name}/{split}/{epoch}"] = ids
        if name == "folder":
            names = [Path(n).stem for n in build_loader(cfg, "holdout", 8).images.names]
            read["folder/holdout"] = [int(n) for n in names]
            assert len(holdout_indices(cfg)) == HELD_OUT
    Path(root, f"read-{acc.process_index}.json").write_text(json.dumps(read))


@pytest.mark.slow
def test_two_nodes_read_every_training_image_once(tmp_path):
    identity_images(tmp_path)
    start = time.perf_counter()
    with two_nodes([__file__, str(tmp_path)], tmp_path, "data") as agents:
        finish(agents, tmp_path, "data")
    print(f"two-node data job: {time.perf_counter() - start:.1f} s")
    ranks = [json.loads((tmp_path / f"read-{r}.json").read_text()) for r in range(2)]
    held_out = set(ranks[0]["folder/holdout"])
    assert len(held_out) == HELD_OUT and ranks[1]["folder/holdout"] == ranks[0]["folder/holdout"]
    for name, training in (("folder", set(range(IMAGES)) - held_out), ("webdataset", set(range(IMAGES)))):
        for epoch in (0, 1):
            parts = [r[f"{name}/train/{epoch}"] for r in ranks]
            seen = parts[0] + parts[1]
            assert len(parts[0]) == len(parts[1])  # every process runs the same number of steps
            assert len(seen) == len(set(seen)), "an image read twice in one epoch (padding?)"
            if name == "folder":
                assert set(seen) == training, "training images missed or held-out images read"
            else:  # 61 images in shards of 31 and 30: each process reads 7 batches, 5 images are left this epoch
                assert set(seen) <= training and len(seen) == 2 * BATCH * ((IMAGES // 2) // BATCH)
        assert [r[f"{name}/train/0"] for r in ranks] != [r[f"{name}/train/1"] for r in ranks]  # reshuffled
        val = ranks[0][f"{name}/val/0"] + ranks[1][f"{name}/val/0"]
        assert sorted(val) == list(range(13)), "validation: every image exactly once, no padding"


if __name__ == "__main__":
    worker(sys.argv[1])
