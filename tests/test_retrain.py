"""Retraining found subnets as an S-Net of exactly those subnets, and splitting it: every split model equals the
supernet at its subnet."""

import json
import subprocess

import numpy as np
import pytest
import torch
from conftest import PYTHON, subprocess_env

import dslim
from dslim.evaluation.calibration import recalibrate
from dslim.io.artifacts import load_supernet, save_supernet
from dslim.io.channels import write_channels
from dslim.methods.sandwich import step_subnets
from dslim.models import create_supernet
from dslim.models.sampling import in_bins
from dslim.stages.retrain import RetrainConfig, sandwich_settings


def _randomize(net, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2 + (1.0 if p.dim() == 1 else 0.0))
        for name, b in net.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=gen) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=gen) + 0.5)
    return net.eval()


def found_subnets(net, n=3, seed=0):
    """Per-group subnets in bins, as a search finds them, named like its results."""
    rng = np.random.default_rng(seed)
    return {f"autoslim-{i}": in_bins(net, rng, 12, 2) for i in range(n)}


def assert_split_equals_supernet(net, subnets, tmp_path, size=40):
    x = torch.randn(3, 3, size, size)
    for name, subnet in subnets.items():
        with torch.no_grad(), net.using(subnet, train=False):
            expected = net(x)
        path = tmp_path / f"{name}.safetensors"
        dslim.save_subnet(net, subnet, path, input_size=size)
        split = dslim.load_subnet(path)
        with torch.no_grad():
            torch.testing.assert_close(split(x), expected, atol=1e-5, rtol=1e-5, msg=name)
        assert split.dslim_meta["subnet"] == subnet.to_json()


@pytest.mark.parametrize(("arch", "max_width"), [("mobilenet_v2", 1.5), ("mobilenet_v1", 1.0), ("resnet50", 0.25)])
def test_retrained_snet_of_exactly_the_found_subnets_splits_into_equal_models(tmp_path, arch, max_width):
    search = create_supernet(arch, num_classes=10, max_width=max_width, widths=(max_width / 2, max_width),
                             bn="calibrated")  # fmt: skip
    found = found_subnets(search)
    net = type(search)(**search.unnamed_kwargs("switchable"))
    net.name_subnets(found)
    assert net.named_subnets() == found  # no widths of its own: the S-Net trains exactly these
    settings = sandwich_settings(RetrainConfig())
    trained = [s for _, s in step_subnets(net, settings, np.random.default_rng(0))]
    assert sorted(trained, key=lambda s: -sum(s.values())) == trained and set(trained) == set(found.values())
    _randomize(net)
    # the artifact rebuilds the same network (its own arguments and names), as evaluate and export read it
    save_supernet(net, tmp_path / "model.safetensors", stage="retrain")
    loaded, meta = load_supernet(tmp_path / "model.safetensors", arch)
    assert meta["arch_kwargs"]["bn"] == "switchable" and meta["arch_kwargs"]["widths"] == []
    assert loaded.named_subnets() == found
    assert_split_equals_supernet(loaded.eval(), found, tmp_path)


def test_searched_subnets_of_a_calibrated_supernet_split_into_equal_models(tmp_path):
    net = _randomize(create_supernet("mobilenet_v2", num_classes=10, max_width=1.5, widths=(1.5,), bn="calibrated"))
    found = found_subnets(net, seed=1)
    batches = [(torch.randn(8, 3, 40, 40), torch.zeros(8)) for _ in range(2)]
    recalibrate(net, found, batches, 2)
    assert_split_equals_supernet(net, found, tmp_path)


def test_retrain_stage_trains_channel_files_named_by_stem(tmp_path, digits_cache):
    template = create_supernet("mobilenet_v1", num_classes=10, max_width=0.5, widths=(0.5,))
    files = []
    for (name, subnet), suffix in zip(found_subnets(template, 2).items(), ("yaml", "json")):
        files.append(tmp_path / f"{name}.{suffix}")
        write_channels(files[-1], template, subnet)
    run = tmp_path / "run"

    def retrain(out, channels):
        args = ["--recipe", "autoslim_digits", "--out-dir", str(out), "--data.cache-dir", str(digits_cache),
                "--model.max-width", "0.5", "--model.widths", "0.5", "--stages", "retrain",
                "--stages.retrain.epochs", "1", "--stages.retrain.channels", *map(str, channels)]  # fmt: skip
        env = subprocess_env()
        return subprocess.run([PYTHON, "-m", "dslim.train", *args], capture_output=True, text=True, env=env)

    done = retrain(run, files)
    assert done.returncode == 0, done.stderr[-3000:]
    net, meta = load_supernet(run / "retrain" / "model.safetensors", "mobilenet_v1")
    assert list(net.named_subnets()) == ["autoslim-0", "autoslim-1"] and meta["stage"] == "retrain"
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("kind") == "epoch" and "top1/autoslim-0" in r for r in epochs)
    # a file that does not fit is refused before any work, naming its entry
    bad = tmp_path / "bad.yaml"
    bad.write_text("features.0.0: {out_channels: 999}\n")
    done = retrain(tmp_path / "other", [bad])
    assert done.returncode == 2 and "entry 'features.0.0'" in done.stderr and not (tmp_path / "other").exists()
