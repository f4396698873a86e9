"""Importing Zx55/dmcp's stage-1 checkpoints: files built here with the original's key names (its MobileNet v2 x1.5
and ResNet-18 layouts, alphas tied by residuals under several keys), imported, then run against a forward written
here from the original's layer order, with and without its soft channel masks (placed where the original's forward
applies its alpha layers); every chain holds the alpha of its layers; sampling runs from the import."""

import json
import subprocess

import pytest
import torch
import torch.nn.functional as F
from conftest import PYTHON, ROOT, subprocess_env

from dslim.errors import UserError
from dslim.importers import dmcp as importer
from dslim.importers import import_checkpoint
from dslim.io.artifacts import load_supernet
from dslim.methods.dmcp import soft_masks
from dslim.methods.dmcp_chains import MarkovChannels
from dslim.models.complexity import MacsModel
from dslim.subnet import make_divisible

MBV2 = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def bn(state: dict, name: str, c: int, gen: torch.Generator) -> None:
    state[f"{name}.weight"] = 1 + 0.1 * torch.randn(c, generator=gen)
    state[f"{name}.bias"] = 0.1 * torch.randn(c, generator=gen)
    state[f"{name}.running_mean"] = torch.randn(c, generator=gen)  # mixed-width statistics: not imported
    state[f"{name}.running_var"] = torch.rand(c, generator=gen) + 0.5
    state[f"{name}.num_batches_tracked"] = torch.tensor(1000)


def conv(state: dict, name: str, shape: tuple, gen: torch.Generator) -> None:
    fan_in = shape[1] * shape[2] * shape[3]
    state[f"{name}.weight"] = torch.randn(shape, generator=gen) / fan_in**0.5


def alpha(state: dict, name: str, value: torch.Tensor) -> None:
    state[f"{name}.alpha"] = value
    state[f"{name}.alpha0"] = torch.ones(1)


def mbv2_file(gen: torch.Generator, classes: int = 12, width: float = 1.5) -> tuple[dict, list]:
    """The original's DMCP MobileNet v2 state at max width `width` (its configs: 1.5; chains of [0.1, width, 0.1])
    and its blocks (c_in, c_out, stride, t)."""
    state: dict = {}
    bins, last = int((width - 0.1) / 0.1 + 1e-4), make_divisible(1280 * width) if width > 1 else 1280
    stem = make_divisible(32 * width)
    conv(state, "conv1", (stem, 3, 3, 3), gen)
    bn(state, "bn1", stem, gen)
    alpha(state, "alpha1", torch.randn(bins, generator=gen))
    plan, c_in, stream = [], stem, state["alpha1.alpha"]
    for t, c, n, s in MBV2:
        c_out = make_divisible(c * width)
        for j in range(n):
            hidden, p = c_in * t, f"blocks.{len(plan)}"
            if t != 1:
                conv(state, f"{p}.conv1", (hidden, c_in, 1, 1), gen)
                bn(state, f"{p}.bn1", hidden, gen)
                alpha(state, f"{p}.alpha1", torch.randn(bins, generator=gen))
            else:
                alpha(state, f"{p}.alpha1", stream)  # tied to its input's
            conv(state, f"{p}.conv2", (hidden, 1, 3, 3), gen)
            bn(state, f"{p}.bn2", hidden, gen)
            conv(state, f"{p}.conv3", (c_out, hidden, 1, 1), gen)
            bn(state, f"{p}.bn3", c_out, gen)
            residual = (s if j == 0 else 1) == 1 and c_in == c_out
            stream = stream if residual else torch.randn(bins, generator=gen)
            alpha(state, f"{p}.alpha2", stream)
            plan.append((c_in, c_out, s if j == 0 else 1, t))
            c_in = c_out
    conv(state, "conv_last", (last, c_in, 1, 1), gen)
    bn(state, "bn_last", last, gen)
    alpha(state, "alpha_last", torch.randn(bins, generator=gen))
    conv(state, "fc", (classes, last, 1, 1), gen)
    state["fc.bias"] = 0.1 * torch.randn(classes, generator=gen)
    return state, plan


def batch_norm(y: torch.Tensor, state: dict, name: str) -> torch.Tensor:
    return F.batch_norm(y, None, None, state[f"{name}.weight"], state[f"{name}.bias"], True)


def soft_mask(y: torch.Tensor, state: dict, alpha: str | None, max_width: float) -> torch.Tensor:
    """The original's alpha layer on `y` (reference/dmcp.md): the first `C - size * bins` channels kept, every later
    bin of `size = int(0.1 * C / max_width)` channels scaled by its keep probability, the cumulative product of the
    transitions `sigmoid(alpha)`; `alpha=None`: no mask (the largest without its masks)."""
    if alpha is None:
        return y
    a = state[f"{alpha}.alpha"]
    c = y.shape[1]
    size = int(0.1 * c / max_width)
    m = torch.cat([torch.ones(c - size * a.numel()), torch.cumprod(torch.sigmoid(a), 0).repeat_interleave(size)])
    return y * m.view(1, -1, 1, 1)


def mbv2_forward(state: dict, plan: list, x: torch.Tensor, masked: bool = False) -> torch.Tensor:
    """The original's DMCP MobileNet v2 forward at its full width (training-mode BatchNorm), written from its layers;
    `masked`: with its alpha layers where its forward applies them (the stem's and the last conv's after BatchNorm,
    a block's `alpha1` after each ReLU6 of the expansion and the depthwise conv, `alpha2` after the projection)."""

    def mask(y: torch.Tensor, alpha: str) -> torch.Tensor:
        return soft_mask(y, state, alpha if masked else None, 1.5)

    y = F.relu6(mask(batch_norm(F.conv2d(x, state["conv1.weight"], stride=2, padding=1), state, "bn1"), "alpha1"))
    for i, (c_in, c_out, s, t) in enumerate(plan):
        p, h = f"blocks.{i}", y
        if t != 1:
            h = mask(F.relu6(batch_norm(F.conv2d(h, state[f"{p}.conv1.weight"]), state, f"{p}.bn1")), f"{p}.alpha1")
        h = F.conv2d(h, state[f"{p}.conv2.weight"], stride=s, padding=1, groups=h.shape[1])
        h = mask(F.relu6(batch_norm(h, state, f"{p}.bn2")), f"{p}.alpha1")
        h = mask(batch_norm(F.conv2d(h, state[f"{p}.conv3.weight"]), state, f"{p}.bn3"), f"{p}.alpha2")
        y = h + y if s == 1 and c_in == c_out else h
    y = F.relu6(mask(batch_norm(F.conv2d(y, state["conv_last.weight"]), state, "bn_last"), "alpha_last"))
    return F.conv2d(y.mean((2, 3), keepdim=True), state["fc.weight"], state["fc.bias"]).flatten(1)


def resnet18_file(gen: torch.Generator, classes: int = 10) -> dict:
    state: dict = {}
    conv(state, "conv1", (64, 3, 7, 7), gen)
    bn(state, "bn1", 64, gen)
    alpha(state, "alpha1", torch.randn(9, generator=gen))
    c_in, stream = 64, state["alpha1.alpha"]
    for s, planes in enumerate((64, 128, 256, 512)):
        for j in range(2):
            p, stride = f"layer{s + 1}.{j}", 2 if j == 0 and s > 0 else 1
            conv(state, f"{p}.conv1", (planes, c_in, 3, 3), gen)
            bn(state, f"{p}.bn1", planes, gen)
            alpha(state, f"{p}.alpha1", torch.randn(9, generator=gen))
            conv(state, f"{p}.conv2", (planes, planes, 3, 3), gen)
            bn(state, f"{p}.bn2", planes, gen)
            if stride != 1 or c_in != planes:
                conv(state, f"{p}.downsample.0", (planes, c_in, 1, 1), gen)
                bn(state, f"{p}.downsample.1", planes, gen)
                stream = torch.randn(9, generator=gen)
            alpha(state, f"{p}.alpha2", stream)
            c_in = planes
    conv(state, "fc", (classes, 512, 1, 1), gen)
    state["fc.bias"] = torch.zeros(classes)
    return state


def resnet18_forward(state: dict, x: torch.Tensor, masked: bool = False) -> torch.Tensor:
    """The original's DMCP ResNet-18 forward; `masked`: every alpha layer after its BatchNorm (a residual block's
    `alpha2` is its input's, on its second conv and, where there is one, on its downsample)."""

    def mask(y: torch.Tensor, alpha: str) -> torch.Tensor:
        return soft_mask(y, state, alpha if masked else None, 1.0)

    y = F.relu(mask(batch_norm(F.conv2d(x, state["conv1.weight"], stride=2, padding=3), state, "bn1"), "alpha1"))
    y = F.max_pool2d(y, 3, 2, 1)
    for s in range(4):
        for j in range(2):
            p, stride = f"layer{s + 1}.{j}", 2 if j == 0 and s > 0 else 1
            h = batch_norm(F.conv2d(y, state[f"{p}.conv1.weight"], stride=stride, padding=1), state, f"{p}.bn1")
            h = F.relu(mask(h, f"{p}.alpha1"))
            h = mask(batch_norm(F.conv2d(h, state[f"{p}.conv2.weight"], padding=1), state, f"{p}.bn2"), f"{p}.alpha2")
            if f"{p}.downsample.0.weight" in state:
                y = batch_norm(
                    F.conv2d(y, state[f"{p}.downsample.0.weight"], stride=stride), state, f"{p}.downsample.1"
                )
                y = mask(y, f"{p}.alpha2")
            y = F.relu(h + y)
    return F.conv2d(y.mean((2, 3), keepdim=True), state["fc.weight"], state["fc.bias"]).flatten(1)


def save(tmp_path, state: dict, name: str = "dmcp.pth.tar"):  # type: ignore[no-untyped-def]
    path = tmp_path / name
    ckpt = {"model": {f"module.{k}": v for k, v in state.items()}, "optimizer": {"state": {}, "param_groups": []},
            "arch_optimizer": {"state": {}, "param_groups": []}, "epoch": 40, "cur_step": 100_000}  # fmt: skip
    torch.save(ckpt, path)
    return path


def imported(path, tmp_path):  # type: ignore[no-untyped-def]
    return import_checkpoint("dmcp", importer.Options(path=str(path), out=str(tmp_path / "x.safetensors")))


def test_mobilenet_v2_weights_and_alphas(tmp_path):
    gen = torch.Generator().manual_seed(0)
    state, plan = mbv2_file(gen)
    net, meta = imported(save(tmp_path, state), tmp_path)
    assert net.arch == "mobilenet_v2" and net.bn_mode == "calibrated"
    chains = MarkovChannels.from_json(meta["dmcp"]["chains"], net, "import")
    x = torch.randn(4, 3, 64, 64, generator=gen)
    with torch.no_grad(), net.using(net.largest(), train=True):
        torch.testing.assert_close(net(x), mbv2_forward(state, plan, x), atol=1e-4, rtol=1e-4)
        with soft_masks(net, chains.masks()):
            masked = net(x)
    expected = mbv2_forward(state, plan, x, masked=True)
    torch.testing.assert_close(masked, expected, atol=1e-4, rtol=1e-4)
    assert (expected - mbv2_forward(state, plan, x)).abs().max() > 0.1  # the masks change the logits

    alphas = chains.alphas()
    assert torch.equal(alphas["stem"], state["alpha1.alpha"])
    assert torch.equal(alphas["head"], state["alpha_last.alpha"])  # the last 1x1 conv: a chain of its own
    first = {}  # first block of each stage: its output alpha is the stage's
    for i, (_, _, _, t) in enumerate(plan):
        if t != 1:
            assert torch.equal(alphas[f"b{i}.expand"], state[f"blocks.{i}.alpha1.alpha"])
    for i, (_, c_out, _, _) in enumerate(plan):
        first.setdefault(c_out, i)
    for k, i in enumerate(first.values()):
        assert torch.equal(alphas[f"s{k}"], state[f"blocks.{i}.alpha2.alpha"])


def test_resnet18_weights_and_alphas(tmp_path):
    gen = torch.Generator().manual_seed(1)
    state = resnet18_file(gen)
    net, meta = imported(save(tmp_path, state), tmp_path)
    assert net.arch == "resnet18"
    chains = MarkovChannels.from_json(meta["dmcp"]["chains"], net, "import")
    x = torch.randn(2, 3, 64, 64, generator=gen)
    with torch.no_grad(), net.using(net.largest(), train=True):
        torch.testing.assert_close(net(x), resnet18_forward(state, x), atol=1e-4, rtol=1e-4)
        with soft_masks(net, chains.masks()):
            torch.testing.assert_close(net(x), resnet18_forward(state, x, masked=True), atol=1e-4, rtol=1e-4)
    alphas = chains.alphas()
    assert torch.equal(alphas["stem"], state["alpha1.alpha"])  # the stem and layer1's residual stream: one chain
    for b, (s, j) in enumerate((s, j) for s in range(4) for j in range(2)):
        assert torch.equal(alphas[f"b{b}.mid"], state[f"layer{s + 1}.{j}.alpha1.alpha"])
    for s in range(1, 4):
        assert torch.equal(alphas[f"s{s}"], state[f"layer{s + 1}.0.alpha2.alpha"])


def test_refusals(tmp_path):
    gen = torch.Generator().manual_seed(2)
    state = resnet18_file(gen)
    state["layer1.1.alpha2.alpha"] = state["layer1.1.alpha2.alpha"] + 1  # a tied copy that differs
    with pytest.raises(UserError, match="tied by a residual but differ"):
        imported(save(tmp_path, state), tmp_path)
    state = resnet18_file(gen)
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(UserError, match="entries this architecture does not have: extra.weight"):
        imported(save(tmp_path, state), tmp_path)
    state = resnet18_file(gen)
    state["layer2.0.alpha1.alpha"] = torch.zeros(5)
    with pytest.raises(UserError, match=r"layer2.0.alpha1.alpha has shape \(5,\), expected \(9,\)"):
        imported(save(tmp_path, state), tmp_path)
    # a structure the original builds and dslim does not have says so: its 10-class (CIFAR-10) MobileNet v2
    with pytest.raises(UserError, match="CIFAR-10 DMCP MobileNet v2 .* not supported"):
        imported(save(tmp_path, mbv2_file(gen, classes=10)[0]), tmp_path)
    # another max width than the shipped configs' is read when given
    state, plan = mbv2_file(gen, width=1.0)
    with pytest.raises(UserError, match="a stem of 32 channels, not the 48 .* give .* --max-width"):
        imported(save(tmp_path, state), tmp_path)
    net, _ = import_checkpoint("dmcp", importer.Options(str(save(tmp_path, state)), "x.safetensors", max_width=1.0))
    x = torch.randn(2, 3, 64, 64, generator=gen)
    with torch.no_grad(), net.using(net.largest(), train=True):
        torch.testing.assert_close(net(x), mbv2_forward(state, plan, x), atol=1e-4, rtol=1e-4)


def test_command_then_sample_from_the_import(tmp_path):
    state = resnet18_file(torch.Generator().manual_seed(3), classes=10)
    for k in [k for k in state if k.endswith(".alpha")]:
        state[k] = state[k] + 3.0  # chains that keep most bins
    path, out = save(tmp_path, state), tmp_path / "r18.safetensors"
    env = subprocess_env()
    done = subprocess.run([PYTHON, "-m", "dslim.import_checkpoint", "dmcp", str(path), "--out", str(out)],
                          capture_output=True, text=True, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    net, meta = load_supernet(out)
    chains = MarkovChannels.from_json(meta["dmcp"]["chains"], net, "import")
    with torch.no_grad():
        assert meta["dmcp"]["expected_macs"] == float(MacsModel(net, 224).macs(chains.expected_channels()))

    recipe = ROOT / "recipes" / "dmcp_resnet18.py"
    run = tmp_path / "run"
    args = [PYTHON, "-m", "dslim.train", "--recipe", str(recipe), "--out-dir", str(run), "--stages", "sample",
            "--from", str(out), "--model.num-classes", "10"]  # fmt: skip
    refused = subprocess.run(args, capture_output=True, text=True, env=env)
    assert refused.returncode == 2 and "give --stages.sample.target-macs" in refused.stderr
    target = 0.9 * meta["dmcp"]["expected_macs"]
    done = subprocess.run([*args, "--stages.sample.target-macs", str(target), "--stages.sample.tolerance", "0.05"],
                          capture_output=True, text=True, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads((run / "sample" / "subnets.json").read_text())
    assert all(abs(found[f"dmcp-direct-{i}"]["macs"] - target) <= 0.05 * target for i in range(5))
