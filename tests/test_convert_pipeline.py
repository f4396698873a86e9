"""Bring your own model end to end on the built-in digits, shortened: the example CNN file trained as a US-Net and
with AutoSlim (search, retrain, export), checking that it learns and that the deployed subnet is the trained one."""

import json
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import PYTHON, ROOT, subprocess_env

import dslim
from dslim.io.artifacts import load_supernet
from dslim.subnet import Subnet

MODEL = f"{ROOT / 'examples' / 'my_cnn.py'}:MyCNN"


def train(run: Path, cache: Path, *args: str) -> list[dict]:
    cmd = [PYTHON, "-m", "dslim.train", "--model.module", MODEL, "--out-dir", str(run), "--data.cache-dir", str(cache),
           *args]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), cwd="/")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_usnet_and_autoslim_on_a_users_model(tmp_path, digits_cache):
    records = train(tmp_path / "us", digits_cache, "--recipe", "usnet_digits", "--stages.supernet.epochs", "2")
    steps = [r["loss"] for r in records if r["kind"] == "step" and r["stage"] == "supernet"]
    assert sum(steps[-3:]) < sum(steps[:3])  # the sandwich loss falls
    report = {r["subnet"]: r for r in json.loads((tmp_path / "us" / "eval.json").read_text())["subnets"]}
    assert report["1.0"]["top1"] > 30 and report["0.5"]["top1"] > 20  # chance is 10%
    assert report["0.25"]["macs"] < report["0.5"]["macs"] < report["1.0"]["macs"]

    run = tmp_path / "as"
    records = train(run, digits_cache, "--recipe", "autoslim_digits", "--model.channel-bins", "4",
                    "--data.holdout", "150", "--stages.search.batch-size", "150", "--stages.search.targets", "6e6",
                    "--stages.supernet.epochs", "2", "--stages.retrain.epochs", "2")  # fmt: skip
    retrain = [r for r in records if r["kind"] == "epoch" and r["stage"] == "retrain"]
    assert retrain[-1]["loss"] < retrain[0]["loss"]
    found = json.loads((run / "search" / "subnets.json").read_text())["autoslim-6M"]
    assert found["macs"] <= 6e6
    row = json.loads((run / "eval.json").read_text())["subnets"][0]
    assert row["subnet"] == "autoslim-6M" and row["top1"] > 15
    # the deployed file is the retrained subnet, and reloads without the model's source
    retrained, _ = load_supernet(run / "retrain" / "model.safetensors", "converted")
    split = dslim.load_subnet(run / "export" / "autoslim-6M.safetensors")
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad(), retrained.using(Subnet.from_json(found["subnet"]), train=False):
        torch.testing.assert_close(split(x), retrained(x), atol=1e-5, rtol=1e-5)
