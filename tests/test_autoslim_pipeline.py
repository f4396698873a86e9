"""AutoSlim end to end on the built-in digits: supernet -> search -> retrain -> evaluate -> export, shortened (4 bins,
a few epochs), checking that it learns, that every found subnet is under its target, and that the split models are
the retrained subnets."""

import json
import subprocess

import pytest
import torch
from conftest import PYTHON, subprocess_env

import dslim
from dslim.io.artifacts import load_supernet
from dslim.subnet import Subnet

TARGETS = {"autoslim-6M": 6e6, "autoslim-3M": 3e6, "autoslim-1.5M": 1.5e6}


@pytest.mark.slow
def test_autoslim_digits_pipeline(tmp_path, digits_cache):
    run = tmp_path / "run"
    args = ["--recipe", "autoslim_digits", "--out-dir", str(run), "--data.cache-dir", str(digits_cache),
            "--model.channel-bins", "4", "--model.min-bin", "1", "--data.holdout", "150", "--stages.search.batch-size",
            "150", "--stages.supernet.epochs", "3", "--stages.retrain.epochs", "3"]  # fmt: skip
    done = subprocess.run([PYTHON, "-m", "dslim.train", *args], capture_output=True, text=True, env=subprocess_env())
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = {s: [r for r in records if r["kind"] == "epoch" and r["stage"] == s] for s in ("supernet", "retrain")}
    assert epochs["supernet"][-1]["top1/1.0"] > 30  # chance is 10%
    assert epochs["retrain"][-1]["loss"] < epochs["retrain"][0]["loss"]
    trace = [json.loads(line) for line in (run / "search" / "trace.jsonl").read_text().splitlines()]
    assert trace[0]["top1"] > 30 and trace[0]["macs"] == 11_597_312

    found = json.loads((run / "search" / "subnets.json").read_text())
    assert list(found) == list(TARGETS)
    assert all(found[n]["macs"] <= t for n, t in TARGETS.items())  # every recorded subnet within its budget
    report = json.loads((run / "eval.json").read_text())
    assert [r["subnet"] for r in report["subnets"]] == list(TARGETS)  # the retrained subnets
    assert [r["macs"] for r in report["subnets"]] == [found[n]["macs"] for n in TARGETS]

    retrained, meta = load_supernet(run / "retrain" / "model.safetensors", "mobilenet_v1")
    assert meta["arch_kwargs"]["bn"] == "switchable" and list(retrained.named_subnets()) == list(TARGETS)
    x = torch.randn(4, 3, 32, 32)
    for name in TARGETS:
        split = dslim.load_subnet(run / "export" / f"{name}.safetensors")
        subnet = Subnet.from_json(found[name]["subnet"])
        with torch.no_grad(), retrained.using(subnet, train=False):
            torch.testing.assert_close(split(x), retrained(x), atol=1e-5, rtol=1e-5)

    # the retrained subnets on the images the search scored them on: printed, eval.json (validation) untouched
    before = (run / "eval.json").read_text()
    held = subprocess.run([PYTHON, "-m", "dslim.evaluate", "--run", str(run), "--split", "holdout", "--json"],
                          capture_output=True, text=True, env=subprocess_env())  # fmt: skip
    assert held.returncode == 0, held.stderr
    assert [r["subnet"] for r in json.loads(held.stdout)["subnets"]] == list(TARGETS)
    assert (run / "eval.json").read_text() == before

    # a found subnet written as an mmrazor channel config profiles back to the same cost
    cfg = tmp_path / "autoslim-3M.yaml"
    env = subprocess_env()
    out = subprocess.run([PYTHON, "-m", "dslim.export", "--run", str(run), "--subnet", "autoslim-3M",
                          "--channels-out", str(cfg)], capture_output=True, text=True, env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr
    prof = subprocess.run([PYTHON, "-m", "dslim.profile", "--recipe", "autoslim_digits", "--channels", str(cfg),
                           "--json"], capture_output=True, text=True, env=subprocess_env())  # fmt: skip
    assert json.loads(prof.stdout) == [{"subnet": "autoslim-3M", "macs": found["autoslim-3M"]["macs"],
                                        "params": found["autoslim-3M"]["params"]}]  # fmt: skip
