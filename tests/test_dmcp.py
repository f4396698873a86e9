"""DMCP's channel model: marginals, expected MACs against the exact count, the FLOPs loss, soft masks, sampling."""

import math

import numpy as np
import pytest
import torch

from dslim.config import ModelConfig
from dslim.errors import UserError
from dslim.methods.dmcp import MarkovChannels, flops_loss, make_chains, marginals, soft_masks
from dslim.models import from_config
from dslim.models.complexity import MacsModel, measure
from dslim.subnet import Subnet

SIZE = 32


def build(arch: str, max_width: float = 1.0):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = ModelConfig(arch=arch, max_width=max_width, widths=(max_width,), bn="calibrated", num_classes=10,
                        input_size=SIZE)  # fmt: skip
    net = from_config(model)
    return net, MarkovChannels(make_chains(net, 0.1, max_width, 0.1))


def hard(chains: MarkovChannels, rng: np.random.Generator) -> Subnet:
    """Set every transition to 0 or 1 at random (not only prefixes); returns the subnet that means."""
    values, channels = [], {}
    for c in chains.chains:
        keep = rng.random(c.bins) < 0.7
        values += [1e4 if k else -1e4 for k in keep]
        channels[c.group] = c.channels(int(np.cumprod(keep).sum()))
    with torch.no_grad():
        chains.alpha.copy_(torch.tensor(values))
    return Subnet.of(channels)


def test_marginals_are_the_cumulative_product_of_the_transitions():
    alpha = torch.randn(9)
    p = torch.sigmoid(alpha)
    expected = torch.tensor([math.prod(p[: i + 1].tolist()) for i in range(9)])
    torch.testing.assert_close(marginals(alpha), expected)

    _, chains = build("mobilenet_v2")
    with torch.no_grad():
        chains.alpha.normal_()
    with torch.no_grad():
        m, masks, e = chains.marginals(), chains.masks(), chains.expected_channels()
    for c in chains.chains:
        a = chains.alphas()[c.group]
        torch.testing.assert_close(m[c.group], torch.cumprod(torch.sigmoid(a), 0))
        assert masks[c.group].shape == (c.keep + c.size * c.bins,)
        assert torch.all(masks[c.group][: c.keep] == 1)
        torch.testing.assert_close(
            masks[c.group][c.keep :].view(c.bins, c.size), m[c.group][:, None].expand(-1, c.size)
        )
        assert float(e[c.group]) == pytest.approx(c.keep + c.size * float(m[c.group].sum()))


def test_chains_follow_the_original_split():
    net, chains = build("mobilenet_v2", 1.5)  # [0.1, 1.5, 0.1]: 14 bins of int(0.1 * C / 1.5) channels
    stem = chains.chains[0]
    assert (stem.group, stem.bins, stem.size, stem.keep) == ("stem", 14, 3, 48 - 42)
    net, chains = build("resnet18")  # [0.1, 1.0, 0.1]: 9 bins; one chain per group, residual streams included
    assert [c.group for c in chains.chains] == list(net.groups)
    assert {(c.bins, c.size, c.keep) for c in chains.chains if net.groups[c.group].max == 64} == {(9, 6, 10)}
    with pytest.raises(UserError, match="min-width"):
        make_chains(net, 1.0, 1.0, 0.1)


@pytest.mark.parametrize("arch", ["mobilenet_v2", "resnet18"])
def test_expected_macs_equal_the_exact_count_at_hard_transitions(arch):
    net, chains = build(arch)
    macs = MacsModel(net, SIZE)
    rng = np.random.default_rng(0)
    for _ in range(5):
        subnet = hard(chains, rng)
        assert chains.expected_subnet() == subnet
        expected = macs.macs(chains.expected_channels())
        assert expected.dtype == torch.float64
        assert float(expected.detach()) == macs.exact(subnet) == measure(net, SIZE, subnet).macs
    with torch.no_grad():
        chains.alpha.fill_(1e4)
    assert float(macs.macs(chains.expected_channels()).detach()) == measure(net, SIZE, net.largest()).macs


def test_expected_macs_gradient_and_flops_loss_direction():
    net, chains = build("resnet18")
    macs = MacsModel(net, SIZE)
    expected = macs.macs(chains.expected_channels())
    (grad,) = torch.autograd.grad(expected, chains.alpha)
    assert torch.all(grad > 0)  # keeping a bin more likely never lowers the expected cost
    low, high = float(expected.detach()) * 2, float(expected.detach()) / 2
    for target, sign in ((low, -1), (high, 1)):  # below the target the loss asks for more channels; above, fewer
        loss = flops_loss(macs.macs(chains.expected_channels()), target)
        (g,) = torch.autograd.grad(loss, chains.alpha)
        assert torch.all(torch.sign(g) == sign)


@pytest.mark.parametrize(
    ("expected", "target", "value"),
    [
        (50e6, 300e6, math.log(0.1 * 250)),  # below 0.95 T, more than 200M away: distance scaled by 0.1
        (250e6, 300e6, math.log(50)),  # below 0.95 T: distance to T
        (290e6, 300e6, 0.0),  # in [0.95 T, T)
        (300e6, 300e6, math.log(15)),  # at T and above: distance to 0.95 T
        (320e6, 300e6, math.log(35)),
        (600e6, 300e6, math.log(0.1 * 315)),  # above, more than 200M from T
    ],
)
def test_flops_loss_is_the_original_log_l1(expected, target, value):
    e = torch.tensor(expected, dtype=torch.float64, requires_grad=True)
    loss = flops_loss(e, target)
    assert float(loss.detach()) == pytest.approx(value, abs=1e-9)
    loss.backward()
    if value == 0.0:
        assert float(e.grad) == 0.0


@pytest.mark.parametrize("arch", ["mobilenet_v2", "resnet18"])
def test_hard_soft_masks_run_the_subnet(arch):
    """At 0/1 transitions the soft-masked largest computes exactly what the sliced subnet computes (training mode,
    batch statistics): the masks sit after BatchNorm, which would otherwise turn a zeroed channel into its bias."""
    net, chains = build(arch)
    net.train()
    x = torch.randn(8, 3, SIZE, SIZE)
    subnet = hard(chains, np.random.default_rng(1))
    with torch.no_grad():
        with net.using(subnet):
            sliced = net(x)
        with net.using(net.largest()), soft_masks(net, chains.masks()):
            masked = net(x)
    torch.testing.assert_close(masked, sliced, atol=1e-4, rtol=1e-4)
    assert all(getattr(m, "mask", None) is None for m in net.modules())  # masks are gone after the block


def test_direct_samples_walk_the_chains():
    _, chains = build("mobilenet_v2")
    with torch.no_grad():
        chains.alpha.normal_(1.0, 1.0)
    bins = chains.sample_bins(np.random.default_rng(0), 20_000)
    with torch.no_grad():
        m = chains.marginals()
    for c in chains.chains:
        # E[kept bins] = sum of the marginals; the first bin is kept with probability sigmoid(alpha_0)
        assert bins[c.group].mean() == pytest.approx(float(m[c.group].sum()), abs=0.06)
        assert (bins[c.group] >= 1).mean() == pytest.approx(float(m[c.group][0]), abs=0.015)
    a, b = chains.sample(np.random.default_rng(3)), chains.sample(np.random.default_rng(3))
    assert a == b  # draws come from the generator only


def test_chains_round_trip_through_json_exactly():
    net, chains = build("resnet18")
    with torch.no_grad():
        chains.alpha.normal_()
    back = MarkovChannels.from_json(chains.to_json(), net, "x")
    assert back.chains == chains.chains and torch.equal(back.alpha, chains.alpha)
    bad = chains.to_json()
    bad["stem"]["keep"] += 1
    with pytest.raises(UserError, match="does not cover"):
        MarkovChannels.from_json(bad, net, "x")
