"""A training run killed mid-stage (SIGKILL) and started again ends with the same weights as an uninterrupted run.

The run exercises every piece of resumable state: model and optimizer (momentum), the EMA (the IEB teacher), the
RNG (dropout), the position inside an epoch (batches skipped on resume) and the epoch boundary after it.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--recipe", "usnet_digits", "--stages", "supernet",
    "--model.max-width", "0.5", "--model.widths", "0.25", "0.5", "--model.width-range", "0.25", "0.5",
    "--model.dropout", "0.2",
    "--stages.supernet.epochs", "2", "--stages.supernet.checkpoint-every", "4",
    "--stages.supernet.distill", "ieb", "--stages.supernet.ema-decay", "0.9",
    "--stages.evaluate.calibrate-batches", "2",
]  # fmt: skip
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
}


def train(out: Path, log: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "dslim.train", *TINY, "--out-dir", str(out)]
    return subprocess.Popen(cmd, env=ENV, stdout=open(out.parent / log, "w"), stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen, log: Path) -> str:
    proc.wait(timeout=600)
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    return text


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    reference = train(straight, "straight.log")
    victim = train(killed, "killed.log")
    state = killed / "supernet" / "state"
    deadline = time.time() + 300
    while not (state.is_dir() and any(p.name.startswith("ckpt-") for p in state.iterdir())):
        assert victim.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
        assert time.time() < deadline, "no checkpoint within 5 minutes"
        time.sleep(0.05)
    victim.kill()
    victim.wait()
    assert not (killed / "supernet" / "model.safetensors").exists(), "killed too late: the stage had finished"

    assert "supernet: resuming from" in finish(train(killed, "resumed.log"), tmp_path / "resumed.log")
    finish(reference, tmp_path / "straight.log")

    a = load_file(straight / "supernet" / "model.safetensors")
    b = load_file(killed / "supernet" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0, msg=k)
    ema_a = load_file(sorted((straight / "supernet" / "state").glob("ckpt-*"))[-1] / "ema.safetensors")
    ema_b = load_file(sorted((killed / "supernet" / "state").glob("ckpt-*"))[-1] / "ema.safetensors")
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)

    # Finished: a third run skips the stage.
    again = subprocess.run([sys.executable, "-m", "dslim.train", *TINY, "--out-dir", str(killed)], env=ENV,
                           capture_output=True, text=True)  # fmt: skip
    assert again.returncode == 0 and "supernet: done" in again.stdout, again.stderr[-2000:]
