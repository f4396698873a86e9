"""Import of the released DS-Net checkpoint format, built here from the key pattern in reference/dsnet.md."""

import argparse
import subprocess
import sys

import torch

from dslim.io.artifacts import load_supernet
from dslim.models.ds_mobilenet_v1 import CHOICES

STAGES = [("s0", 1), ("s1", 2), ("s2", 2), ("s3", 6), ("s4", 2)]
SE = {"stem": 6, "s0": 22, "s1": 42, "s2": 66, "s3": 160, "s4": 288}


def _bn(state, prefix, choices, gen):
    for k, c in enumerate(choices):
        state[f"{prefix}.aux_bn.{k}.running_mean"] = torch.randn(c, generator=gen)
        state[f"{prefix}.aux_bn.{k}.running_var"] = torch.rand(c, generator=gen) + 0.5
        state[f"{prefix}.aux_bn.{k}.num_batches_tracked"] = torch.tensor(k + 1)
    state[f"{prefix}.aux_bn.{len(choices) - 1}.weight"] = torch.randn(max(choices), generator=gen)
    state[f"{prefix}.aux_bn.{len(choices) - 1}.bias"] = torch.randn(max(choices), generator=gen)


def official_state(gen):
    """A state_dict with the official names and shapes (reference/dsnet.md), random values."""
    state = {"conv_stem.weight": torch.randn(24, 3, 3, 3, generator=gen)}
    _bn(state, "bn1", CHOICES["stem"], gen)
    prev = "stem"
    for i, (g, depth) in enumerate(STAGES):
        for j in range(depth):
            p = f"blocks.{i}.first_block" if j == 0 else f"blocks.{i}.residual_blocks.{j - 1}"
            c_in, c_out, se = max(CHOICES[prev]), max(CHOICES[g]), SE[prev]
            state[f"{p}.conv_dw.weight"] = torch.randn(c_in, 1, 3, 3, generator=gen)
            _bn(state, f"{p}.bn1", CHOICES[prev], gen)
            state[f"{p}.gate.conv_reduce.weight"] = torch.randn(se, c_in, 1, 1, generator=gen)
            state[f"{p}.gate.conv_reduce.bias"] = torch.randn(se, generator=gen)
            state[f"{p}.gate.conv_expand.weight"] = torch.randn(c_in, se, 1, 1, generator=gen)
            state[f"{p}.gate.conv_expand.bias"] = torch.randn(c_in, generator=gen)
            state[f"{p}.conv_pw.weight"] = torch.randn(c_out, c_in, 1, 1, generator=gen)
            _bn(state, f"{p}.bn2", CHOICES[g], gen)
            prev = g
    state["blocks.3.first_block.gate.gate.0.weight"] = torch.randn(4, 66, 1, 1, generator=gen)
    state["classifier.weight"] = torch.randn(1000, 1152, generator=gen)
    state["classifier.bias"] = torch.randn(1000, generator=gen)
    return state


def test_import_dsnet_release(tmp_path):
    gen = torch.Generator().manual_seed(0)
    state, ema = official_state(gen), official_state(gen)
    assert len(state) == 838  # the released file's entry count
    path = tmp_path / "dsnet.pth.tar"
    torch.save(
        {
            "epoch": 150,
            "arch": "slimmable_mbnet_v1_bn_uniform",
            "state_dict": state,
            "optimizer": {},
            "args": argparse.Namespace(lr=0.08, model="x"),
            "version": 2,
            "state_dict_ema": ema,
        },
        path,
    )
    out = tmp_path / "dsnet.safetensors"
    cmd = [sys.executable, "-m", "dslim.import_checkpoint", "dsnet", str(path), "--out", str(out), "--ema"]
    assert subprocess.run(cmd, capture_output=True, text=True).returncode == 0
    net, meta = load_supernet(out)
    assert meta["stage"] == "import" and meta["weights"] == "state_dict_ema"
    assert torch.equal(net.stem[0].weight, ema["conv_stem.weight"])
    assert torch.equal(net.gate_block.gate.weight, ema["blocks.3.first_block.gate.gate.0.weight"])
    assert torch.equal(net.stages[3][2].se.expand.bias, ema["blocks.3.residual_blocks.1.gate.conv_expand.bias"])
    # stage 3's second block, bn2 at uniform-5: the statistics of choice 5 of that layer
    bn = net.stages[3][1].bn2
    u5 = net.resolve("uniform-5")
    torch.testing.assert_close(
        bn.stats[u5.key].running_mean, ema["blocks.3.residual_blocks.0.bn2.aux_bn.5.running_mean"]
    )
    torch.testing.assert_close(bn.weight, ema["blocks.3.residual_blocks.0.bn2.aux_bn.13.weight"])
    # the stem's BN at `largest` takes choice 1 (24 channels), at uniform-5 choice 0 (16)
    stem_bn = net.stem[1]
    assert torch.equal(stem_bn.stats[net.resolve("largest").key].running_mean, ema["bn1.aux_bn.1.running_mean"])
    assert torch.equal(stem_bn.stats[u5.key].running_mean, ema["bn1.aux_bn.0.running_mean"])


def test_unsafe_pickles_are_refused(tmp_path):
    path = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": {}, "args": subprocess.CompletedProcess("x", 0)}, path)
    out = subprocess.run(
        [sys.executable, "-m", "dslim.import_checkpoint", "dsnet", str(path), "--out", str(tmp_path / "o.safetensors")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "weights_only" in out.stderr and "Traceback" not in out.stderr
    assert "CompletedProcess" in out.stderr and "weights_only=False" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "\x1b" not in out.stderr
