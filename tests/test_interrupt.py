"""Stopping and crashing: Ctrl-C saves where it was and says how to go on; SIGKILL at any moment of any stage, even
mid-write, loses nothing: a re-run finishes with exactly the weights of a run never interrupted."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import PYTHON, subprocess_env
from safetensors.torch import load_file

from dslim.io import is_temporary

US = ["--recipe", "usnet_digits", "--stages", "supernet", "--model.max-width", "0.5", "--model.widths", "0.25", "0.5",
      "--model.width-range", "0.25", "0.5", "--stages.supernet.epochs", "2"]  # fmt: skip


def start(args: list[str], cache: Path) -> subprocess.Popen:
    cmd = [PYTHON, "-m", "dslim.train", *args, "--data.cache-dir", str(cache)]
    return subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(tmp_path, digits_cache):
    out = tmp_path / "run"
    args = [*US, "--out-dir", str(out), "--stages.supernet.log-every", "1"]
    proc = start(args, digits_cache)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.is_file() and metrics.read_text().count('"kind": "step"') >= 3):  # in the middle of epoch 1
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "stopped by signal 2" in lines[0] and "run the same command again" in lines[0], err
    assert "Traceback" not in err
    ckpt = sorted((out / "supernet" / "state").glob("ckpt-*"))
    assert ckpt and json.loads((ckpt[-1] / "trainer.json").read_text())["batch"] > 0  # saved mid-epoch

    resumed = subprocess.run([PYTHON, "-m", "dslim.train", *args, "--data.cache-dir", str(digits_cache)],
                             env=subprocess_env(), capture_output=True, text=True, timeout=600)  # fmt: skip
    assert resumed.returncode == 0 and "supernet: resuming from" in resumed.stdout, resumed.stderr[-2000:]
    straight = subprocess.run([PYTHON, "-m", "dslim.train", *US, "--out-dir", str(tmp_path / "straight"),
                               "--data.cache-dir", str(digits_cache)], env=subprocess_env(), capture_output=True,
                              text=True, timeout=600)  # fmt: skip
    assert straight.returncode == 0, straight.stderr[-2000:]
    a, b = (
        load_file(out / "supernet" / "model.safetensors"),
        load_file(tmp_path / "straight/supernet/model.safetensors"),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if '"kind": "step"' in line]
    assert steps == sorted(set(steps)), "a resumed stage logs each step once"


DS = ["--recipe", "dsnet_digits", "--data.batch-size", "128", "--stages.supernet.epochs", "1",
      "--stages.supernet.checkpoint-every", "3", "--stages.bn-recalibration.batches", "2",
      "--stages.gate.epochs", "1", "--stages.gate.checkpoint-every", "3",
      "--stages.evaluate.subnets", "largest", "uniform-0", "uniform-3",
      "--stages.export.subnets", "uniform-0"]  # fmt: skip
STAGES = ["supernet", "bn_recalibration", "gate", "evaluate", "export"]
PLAN = [("supernet", "random"), ("supernet", "write"), ("supernet", "random"), ("bn_recalibration", "random"),
        ("bn_recalibration", "write"), ("gate", "write"), ("gate", "random"), ("gate", "write"),
        ("evaluate", "random"), ("export", "random"), ("export", "write")]  # fmt: skip


def _temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if is_temporary(p)] if root.exists() else []


def _kill_during(stage: str, mode: str, out: Path, cache: Path, rng: random.Random) -> str:
    """Start the pipeline, wait until `stage` runs, SIGKILL it (at a random moment, or as soon as a file or a
    checkpoint is being written); returns what happened."""
    old = set(_temporaries(out))  # left by an earlier kill; the run sweeps them away first
    proc = start([*DS, "--out-dir", str(out)], cache)
    seen: list[str] = []
    threading.Thread(target=lambda: seen.extend(iter(proc.stdout.readline, "")), daemon=True).start()
    deadline = time.time() + 300
    later = STAGES[STAGES.index(stage) + 1 :]
    while not any(line.startswith(f"{stage}: starting") for line in seen) and stage != "supernet":
        if proc.poll() is not None or time.time() > deadline or any(line.startswith(tuple(later)) for line in seen):
            break
        time.sleep(0.01)
    if mode == "random":
        time.sleep(rng.uniform(0.0, 2.0))
    else:
        while not set(_temporaries(out)) - old and proc.poll() is None and time.time() < deadline:
            time.sleep(0.002)
    caught = bool(set(_temporaries(out)) - old)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return f"{stage}/{mode}: {'mid-write' if caught else 'killed'}" if proc.returncode < 0 else f"{stage}: finished"


@pytest.mark.slow
def test_sigkill_anywhere_then_rerun_ends_as_an_uninterrupted_run(tmp_path, digits_cache):
    rng = random.Random(0)
    soaked, straight = tmp_path / "soaked", tmp_path / "straight"
    events = [_kill_during(stage, mode, soaked, digits_cache, rng) for stage, mode in PLAN]
    assert sum("killed" in e or "mid-write" in e for e in events) >= 10, events
    assert sum("mid-write" in e for e in events) >= 3, events
    for out in (soaked, straight):
        cmd = [PYTHON, "-m", "dslim.train", *DS, "--out-dir", str(out), "--data.cache-dir", str(digits_cache)]
        done = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]

    import dslim
    from dslim.io.artifacts import load_supernet

    assert _temporaries(soaked) == []
    for line in (soaked / "metrics.jsonl").read_text().splitlines():
        json.loads(line)
    for stage in ("supernet", "bn_recalibration", "gate"):
        load_supernet(soaked / stage / "model.safetensors")
        a, b = load_file(soaked / stage / "model.safetensors"), load_file(straight / stage / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), stage
    for name in ("uniform-0", "dynamic"):
        dslim.load_subnet(soaked / "export" / f"{name}.safetensors")
    assert json.loads((soaked / "eval.json").read_text()) == json.loads((straight / "eval.json").read_text())
