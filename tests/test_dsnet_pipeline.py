"""DS-Net end to end on the built-in digits: all stages, eval.json's dynamic row, exports, resume in the gate."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import dslim
from dslim.deploy.extraction import RoutedNet
from dslim.io.artifacts import load_supernet


def _cmd(out, cache):
    return [sys.executable, "-m", "dslim.train", "--recipe", "dsnet_digits", "--out-dir", str(out),
            "--data.cache-dir", str(cache), "--stages.supernet.epochs", "1", "--stages.gate.epochs", "3",
            "--stages.bn-recalibration.batches", "2", "--stages.export.subnets", "uniform-0",
            "--stages.gate.ema-decay", "0.5", "--stages.gate.ema-artifact"]  # fmt: skip


@pytest.mark.slow
def test_dsnet_digits_killed_in_the_gate_stage_resumes_without_redoing_stage_one(tmp_path):
    out, env = tmp_path / "run", {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(_cmd(out, tmp_path / "cache"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)  # fmt: skip
    deadline = time.time() + 600
    while not list((out / "gate" / "state").glob("ckpt-*")):  # the gate's first epoch is checkpointed
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "gate" / "model.safetensors").exists()
    supernet_artifact = (out / "supernet" / "model.safetensors").stat().st_mtime_ns

    done = subprocess.run(_cmd(out, tmp_path / "cache"), capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "supernet: done" in done.stdout and "gate: resuming" in done.stdout
    assert (out / "supernet" / "model.safetensors").stat().st_mtime_ns == supernet_artifact

    report = json.loads((out / "eval.json").read_text())
    names = [r["subnet"] for r in report["subnets"]]
    assert names == ["largest"] + [f"uniform-{r}" for r in range(14)]
    dynamic = report["dynamic"]
    route_macs = list(dynamic["route_macs"].values())
    assert min(route_macs) <= dynamic["macs_mean"] <= max(route_macs)
    assert sum(dynamic["routes"].values()) == 360 and list(dynamic["routes"]) == [f"uniform-{r}" for r in range(4)]
    assert (out / "pareto.png").stat().st_size > 0

    # the gate's EMA is the artifact (as the original reported it), its trained weights beside it
    handed, handed_meta = load_supernet(out / "gate" / "model.safetensors")
    trained, trained_meta = load_supernet(out / "gate" / "weights.safetensors")
    assert handed_meta["ema"] and handed_meta["ema_decay"] == 0.5 and handed.router_trained
    assert not torch.equal(handed.gate_block.gate.weight, trained.gate_block.gate.weight)
    assert torch.equal(handed.classifier.weight, trained.classifier.weight)  # only the gate learnt
    assert handed_meta["preprocessing"]["mean"] == [0.5] * 3 and handed_meta["preprocessing"]["input_size"] == 32

    routed = dslim.load_subnet(out / "export" / "dynamic.safetensors")
    assert routed.preprocessing == handed_meta["preprocessing"]  # what the user must feed it
    static = dslim.load_subnet(out / "export" / "uniform-0.safetensors")
    assert isinstance(routed, RoutedNet)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert routed(x).shape == static(x).shape == (4, 10)
