"""Bring your own model: every family of `tests/zoo.py` converts, and each converted supernet is right where it counts.

For each model: the largest subnet computes the original model (weights and BatchNorm statistics); three random
subnets exported with `dslim.extract` compute what the supernet computes there, and their MACs equal an independent
count of the exported module (`torch.utils.flop_counter`: convolutions, linear layers and matrix products, whose
FLOPs it counts as 2 per multiply-accumulate); one sandwich step through the real trainer changes the weights; one
subnet exported to ONNX runs in onnxruntime as in PyTorch; and the model saved and reloaded without its source
computes the same.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import dslim
from dslim.deploy import runtime as onnx_runtime
from dslim.deploy.onnx import export_static
from dslim.evaluation.calibration import recalibrate
from dslim.io.artifacts import load_supernet, save_supernet
from dslim.methods.sandwich import Sandwich, SandwichConfig
from dslim.models.complexity import MacsModel, measure
from dslim.models.convert import convert
from dslim.models.sampling import per_group
from dslim.nn.graph_ops import GraphOp
from dslim.training import MetricsLog, Trainer, make_accelerator

sys.path.insert(0, str(Path(__file__).parent))
from zoo import ZOO, pretrained  # noqa: E402

SIZE = 32
_CACHE: dict[str, tuple[nn.Module, dslim.Supernet]] = {}


def converted(name: str) -> tuple[nn.Module, dslim.Supernet]:
    if name not in _CACHE:
        model = pretrained(name)
        _CACHE[name] = (model, convert(model, torch.randn(2, 3, SIZE, SIZE), width_range=(0.25, 1.0), bn="calibrated"))
    return _CACHE[name]


def images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def random_subnets(net: dslim.Supernet, n: int = 3) -> dict[str, dslim.Subnet]:
    rng = np.random.default_rng(0)
    return {f"random-{i}": per_group(net, rng) for i in range(n)}


def conv_linear_macs(model: nn.Module, x: torch.Tensor) -> int:
    """MACs of convolutions and matrix products by PyTorch's own FLOP counter (2 FLOPs per MAC), per image."""
    with FlopCounterMode(display=False) as counter:
        model(x)
    counted = {"convolution", "mm", "addmm", "bmm"}
    flops = sum(n for op, n in counter.get_total_flops_by_op().items() if op.__name__.split(".")[0] in counted) \
        if hasattr(counter, "get_total_flops_by_op") else \
        sum(n for op, n in counter.get_flop_counts()["Global"].items() if str(op).split(".")[1] in counted)  # fmt: skip
    return flops // 2 // x.shape[0]


@pytest.mark.parametrize("name", list(ZOO))
def test_largest_subnet_is_the_model(name):
    model, net = converted(name)
    x = images(4, 1)
    with torch.no_grad(), net.using(net.largest(), train=False):
        torch.testing.assert_close(net(x), model.eval()(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(ZOO))
def test_exported_subnets_equal_the_supernet_and_their_macs_are_counted(name):
    _, net = converted(name)
    subnets = random_subnets(net)
    recalibrate(net, subnets, [(images(8, i), None) for i in range(2)], 2, show=False)
    x = images(3, 2)
    macs = MacsModel(net, SIZE)
    for label, subnet in subnets.items():
        static = dslim.extract(net, subnet)
        with torch.no_grad(), net.using(subnet, train=False):
            expected = net(x)
        with torch.no_grad():
            torch.testing.assert_close(static(x), expected, atol=1e-5, rtol=1e-5, msg=f"{name} {label}")
        cost = measure(static, SIZE)
        assert cost.macs == measure(net, SIZE, subnet).macs == macs.exact(subnet)
        assert cost.params == sum(p.numel() for p in static.parameters())
        layers = {n for n, m in static.named_modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))
                  or isinstance(m, GraphOp) and m.kind == "matmul"}  # fmt: skip
        counted = sum(t.macs for t in cost.terms if t.name in layers)
        with torch.no_grad():
            assert counted == conv_linear_macs(static, x), f"{name} {label}"


@pytest.mark.parametrize("name", list(ZOO))
def test_one_sandwich_step_changes_the_weights(tmp_path, name):
    _, net = converted(name)
    net = net.__class__(**net.arch_kwargs)
    net.load_state_dict(converted(name)[1].state_dict())
    before = {k: v.clone() for k, v in net.state_dict().items()}
    cfg = SandwichConfig(epochs=1, num_random=1, distill="inplace")
    AcceleratorState._reset_state(True)
    acc = make_accelerator("no")
    trainer = Trainer(acc, net, Sandwich(cfg), cfg, stage="supernet", state_dir=tmp_path / "state",
                      metrics=MetricsLog(tmp_path / "m.jsonl", acc), batch_size=8, seed=0)  # fmt: skip
    trainer.fit(lambda epoch: [(images(8, 5), torch.arange(8) % 10)])
    changed = [k for k, v in trainer.supernet.state_dict().items() if k in before and not torch.equal(v, before[k])]
    # every conv and linear weight moves (a BatchNorm shift followed by a conv and another BatchNorm has no gradient)
    weights = [k for k, p in net.named_parameters() if p.dim() > 1]
    assert set(weights) <= set(changed), f"{name}: unchanged {sorted(set(weights) - set(changed))[:5]}"


@pytest.mark.parametrize("name", list(ZOO))
def test_onnx_export_and_reload_without_source(tmp_path, name):
    _, net = converted(name)
    subnet = net.uniform(0.5)
    recalibrate(net, {"0.5": subnet}, [(images(8, 7), None)], 1, show=False)
    path = tmp_path / f"{name}.onnx"
    export_static(net, subnet, path, SIZE, exporter="torchscript")
    x = images(3, 8)
    with torch.no_grad(), net.using(subnet, train=False):
        expected = net(x)
    np.testing.assert_allclose(onnx_runtime.load(path)(x.numpy()), expected.numpy(), atol=1e-4, rtol=1e-4)
    # the supernet and the subnet reload from their files alone: the graph is data, not the user's code
    save_supernet(net, tmp_path / "super.safetensors")
    again, _ = load_supernet(tmp_path / "super.safetensors", "converted")
    dslim.save_subnet(net, subnet, tmp_path / "sub.safetensors", input_size=SIZE)
    loaded = dslim.load_subnet(tmp_path / "sub.safetensors")
    with torch.no_grad(), again.using(subnet, train=False):
        torch.testing.assert_close(again(x), expected)
        torch.testing.assert_close(loaded(x), expected, atol=1e-5, rtol=1e-5)


def test_the_users_line_is_found_whatever_its_folder_is_called():
    # a user's code in a folder named `dslim` (a clone of this repository) or `torch` is still the user's
    from types import SimpleNamespace

    from dslim.models.convert.analysis import LIBRARIES, source_of

    own = f'File "{LIBRARIES[1]}models/convert/trace.py", line 9, in call'
    for folder in ("/home/me/dslim/experiments", "/srv/torch/models"):
        trace = f'File "{folder}/net.py", line 42, in forward\n    x = x.roll(1, 1)\n{own}\n    y = f(x)'
        assert source_of(SimpleNamespace(stack_trace=trace, name="roll")) == "net.py:42"
    assert source_of(SimpleNamespace(stack_trace=own, name="roll")) == "roll"


def test_what_cannot_be_sliced_stays_at_full_width_and_is_named():
    _, net = converted("custom_op")
    text = net.describe()
    assert "mid.0 (Conv2d, 24 channels): zoo.py" in text and "torch.roll along channels" in text
    assert set(net.groups) == {"stem.0", "tail.0"}
    x = images(2, 3)
    with torch.no_grad(), net.using(net.uniform(0.25), train=True):
        mids = [m for n, m in net.model.named_modules() if n == "mid.0"]
        assert mids[0](torch.randn(2, 4, 8, 8)).shape[1] == 24  # its input follows stem.0, its output stays whole
        net(x)


FULL_WIDTH = {"custom_op": ["mid.0", "fc"], "attention": ["stem.0", "fc"], "functional": ["fc"]}


@pytest.mark.parametrize("name", list(ZOO))
def test_only_what_cannot_be_sliced_stays_at_full_width(name):
    """The classifier's outputs, and what meets an operation without a channel rule (a roll, an einsum)."""
    _, net = converted(name)
    fixed = [f["layer"] for f in net.arch_kwargs["graph"]["report"]["fixed"]]
    assert fixed == FULL_WIDTH.get(name, [fixed[-1]]) and fixed[-1] in ("fc", "head", "classifier", "classifier.1",
                                                                         "classifier.3"), net.describe()  # fmt: skip


@pytest.mark.parametrize("name", ["convnext", "resnext", "densenet", "shufflenet_v2"])
def test_dmcp_soft_masks_reach_every_group(name):
    """DMCP's architecture pass: every chain's alphas get a gradient from the loss through its soft masks (after a
    BatchNorm, or a LayerNorm, or the layers' outputs of a group without normalization: ConvNeXt's 4x expansion)."""
    from dslim.methods.dmcp import soft_masks
    from dslim.methods.dmcp_chains import MarkovChannels, make_chains

    _, net = converted(name)
    chains = MarkovChannels(make_chains(net, 0.3, 1.0, 0.1))  # ShuffleNet's split groups keep a few channels
    with torch.no_grad():
        chains.alpha.copy_(torch.randn(chains.alpha.shape, generator=torch.Generator().manual_seed(0)))
    with net.using(net.largest(), train=True), soft_masks(net, chains.masks()):
        net(images(4, 9)).square().sum().backward()
    grads = chains.alpha.grad.split([c.bins for c in chains.chains])
    silent = [c.group for c, g in zip(chains.chains, grads) if c.bins and not g.abs().sum() > 0]
    assert not silent, f"{name}: no gradient for {silent}"
    assert all(c.size % net.groups[c.group].step == 0 for c in chains.chains)  # grouped convs keep whole groups
