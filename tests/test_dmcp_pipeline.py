"""DMCP through the real command: a target out of reach refused before any work, a dmcp stage killed in its second
phase resuming to the same weights and alphas, and the digits pipeline (shortened) learning end to end."""

import json
import signal
import subprocess
import time

import pytest
import torch
from conftest import PYTHON, ROOT, subprocess_env
from safetensors.torch import load_file

import dslim
from dslim.io.artifacts import load_supernet
from dslim.methods.dmcp_chains import MarkovChannels
from dslim.models.complexity import MacsModel, measure
from dslim.subnet import Subnet

RECIPE = str(ROOT / "recipes" / "dmcp_digits.py")
SMALL = ["--model.max-width", "0.5", "--model.widths", "0.5", "--stages.dmcp.target-macs", "1e6"]
"""MobileNet v2 0.5x at 32px: 1.97M MACs at its widest, the chains reach down to 0.17M (0.42M expected at start)."""


def train(*args: str, **kw) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    return subprocess.run([PYTHON, "-m", "dslim.train", "--recipe", RECIPE, *args], capture_output=True, text=True,
                          env=subprocess_env(), **kw)  # fmt: skip


def test_target_out_of_reach_exits_2_with_the_range(tmp_path):
    out = tmp_path / "run"
    done = train("--out-dir", str(out), "--stages.dmcp.target-macs", "50e6")
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--stages.dmcp.target-macs 5e+07" in lines[0], lines
    assert ".. 6,126,208 MACs at 32px" in lines[0]  # the reachable range, up to the largest subnet
    assert not out.exists()  # refused before any work


@pytest.mark.slow
def test_dmcp_stage_killed_in_its_second_phase_resumes_to_the_same_weights_and_alphas(tmp_path, digits_cache):
    # 1,437 images in batches of 128: 11 steps per epoch, 22 in all; the alphas learn from step 11
    args = [*SMALL, "--stages", "dmcp", "--data.cache-dir", str(digits_cache), "--data.batch-size", "128",
            "--stages.dmcp.epochs", "2", "--stages.dmcp.warmup", "0.5",
            "--stages.dmcp.checkpoint-every", "3"]  # fmt: skip
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    done = train("--out-dir", str(straight), *args, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    log = open(tmp_path / "killed.log", "w")
    cmd = [PYTHON, "-m", "dslim.train", "--recipe", RECIPE, "--out-dir", str(killed), *args]
    victim = subprocess.Popen(cmd, env=subprocess_env(), stdout=log, stderr=log)
    state, deadline = killed / "dmcp" / "state", time.time() + 600
    while not any(int(p.name[5:]) > 11 for p in state.glob("ckpt-*")):
        assert victim.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
        assert time.time() < deadline, "no checkpoint of the second phase within 10 minutes"
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (killed / "dmcp" / "model.safetensors").exists(), "killed too late: the stage had finished"
    done = train("--out-dir", str(killed), *args, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "dmcp: resuming from" in done.stdout

    a, b = load_file(straight / "dmcp" / "model.safetensors"), load_file(killed / "dmcp" / "model.safetensors")
    assert a.keys() == b.keys() and not any(k.startswith("dmcp.") for k in a)  # alphas are not weights
    for k in a:
        assert torch.equal(a[k], b[k]), k
    meta_a = load_supernet(straight / "dmcp" / "model.safetensors")[1]["dmcp"]
    meta_b = load_supernet(killed / "dmcp" / "model.safetensors")[1]["dmcp"]
    assert meta_a == meta_b
    assert any(x != 0 for c in meta_a["chains"].values() for x in c["alpha"]), "the alphas never learnt"
    steps = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if r["kind"] == "step" and r["stage"] == "dmcp"]
    assert all(("loss/arch" in r) == (r["step"] > 11) for r in steps)


@pytest.mark.slow
def test_dmcp_digits_pipeline(tmp_path, digits_cache):
    run = tmp_path / "run"
    done = train("--out-dir", str(run), *SMALL, "--data.cache-dir", str(digits_cache), "--stages.supernet.epochs", "2",
                 "--stages.supernet.eval-subnets", "0.5",
                 "--stages.dmcp.epochs", "4", "--stages.retrain.epochs", "4", timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]

    net, meta = load_supernet(run / "dmcp" / "model.safetensors", "mobilenet_v2")
    chains = MarkovChannels.from_json(meta["dmcp"]["chains"], net, "dmcp")
    macs = MacsModel(net, 32)
    with torch.no_grad():
        start = float(macs.macs(MarkovChannels(chains.chains).expected_channels()))  # alphas at 0
        expected = float(macs.macs(chains.expected_channels()))
    assert expected == pytest.approx(meta["dmcp"]["expected_macs"])
    assert abs(expected - 1e6) < 0.1e6 < abs(start - 1e6)  # pulled from 0.48M to the target

    found = json.loads((run / "sample" / "subnets.json").read_text())
    assert list(found) == ["dmcp-expected", *(f"dmcp-direct-{i}" for i in range(5))]
    for name, entry in found.items():
        subnet = Subnet.from_json(entry["subnet"])
        assert entry["macs"] == macs.exact(subnet) == measure(net, 32, subnet).macs
        if "direct" in name:
            assert abs(entry["macs"] - 1e6) <= 0.01 * 1e6
    assert found["dmcp-expected"]["subnet"] == chains.expected_subnet().to_json()
    assert (run / "sample" / "marginals.png").stat().st_size > 10_000

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    dmcp_epochs = [r for r in records if r["kind"] == "epoch" and r["stage"] == "dmcp"]
    assert dmcp_epochs[-1]["top1/largest"] > 30  # validated at the largest after recalibration; chance is 10%
    retrain = [r for r in records if r["kind"] == "epoch" and r["stage"] == "retrain"]
    assert retrain[-1]["loss"] < retrain[0]["loss"]
    report = json.loads((run / "eval.json").read_text())
    assert [r["subnet"] for r in report["subnets"]] == ["dmcp-expected"]
    assert report["subnets"][0]["macs"] == found["dmcp-expected"]["macs"] and report["subnets"][0]["top1"] > 20

    retrained, _ = load_supernet(run / "retrain" / "model.safetensors", "mobilenet_v2")
    split = dslim.load_subnet(run / "export" / "dmcp-expected.safetensors")
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad(), retrained.using(Subnet.from_json(found["dmcp-expected"]["subnet"]), train=False):
        torch.testing.assert_close(split(x), retrained(x), atol=1e-5, rtol=1e-5)
