"""The `*_hard` recipes learn on `digits-hard`: the first training stage of each, three epochs in tiny settings
(1,024 of the training images, batches of 32), with a loss falling after the warm-up epoch and the widest subnet
well above chance at the end.

Measured at 1 thread (top-1 of the widest by epoch, loss by epoch): DS-Net 10.0, 13.0, 24.5 and 9.28, 9.68, 9.20;
S-Net 10.0, 14.3, 29.8 and 9.99, 11.64, 8.65; US-Net 12.3, 25.6, 34.7; AutoSlim 11.3, 16.2, 24.8 and 9.25, 9.91,
9.56; DMCP 10.8, 16.9, 20.4 and 9.23, 9.28, 9.23; BlockDrop 9.8, 18.0, 20.6 and 2.46, 2.35, 2.21. The loss rises
at the peak rate of the short schedule before it falls (in-place distillation's terms grow as the largest's
targets sharpen), so it is compared after warm-up. About 6 CPU-minutes in all, one thread."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import PYTHON, subprocess_env

TRAIN_IMAGES = 1024
"""Training images kept (the rest of the 2,874 are held out): epochs of 32 steps."""
EPOCHS = 3
CHANCE = 10.0
"""Top-1 (%) of a guess among the 10 classes; on the 1,080 validation images its spread is about 1 point."""
STAGES = {"dsnet_hard": "supernet", "snet_hard": "supernet", "usnet_hard": "supernet", "autoslim_hard": "supernet",
          "dmcp_hard": "supernet", "blockdrop_hard": "pretrain"}  # fmt: skip


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dslim.data.digits_hard import digits_hard_root

    cache = tmp_path_factory.mktemp("hard-cache")
    digits_hard_root(cache)
    return cache


@pytest.mark.slow
@pytest.mark.parametrize("recipe", list(STAGES))
def test_recipe_learns(recipe: str, cache: Path, tmp_path: Path) -> None:
    stage = STAGES[recipe]
    holdout = len(list((cache / "digits-hard-v1" / "train").glob("*/*.png"))) - TRAIN_IMAGES
    args = ["--recipe", recipe, "--out-dir", str(tmp_path / "run"), "--data.cache-dir", str(cache),
            "--data.holdout", str(holdout), "--data.batch-size", "32",
            "--pipeline", stage, f"--stages.{stage}.epochs", str(EPOCHS)]  # fmt: skip
    done = subprocess.run([PYTHON, "-m", "dslim.train", *args], env=subprocess_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    epochs = [r for r in map(json.loads, lines) if r["kind"] == "epoch" and r["stage"] == stage]
    assert len(epochs) == EPOCHS
    assert epochs[-1]["loss"] < epochs[1]["loss"], [e["loss"] for e in epochs]
    top1 = [{k: v for k, v in e.items() if k.startswith("top1/")} for e in epochs]
    widest = next(k for k in ("top1/largest", "top1/1.0") if k in top1[-1])
    assert top1[-1][widest] > CHANCE + 7.5, top1
