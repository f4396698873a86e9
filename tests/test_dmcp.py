"""DMCP's channel model: marginals, expected MACs against the exact count, the FLOPs loss, soft masks, sampling; and
what a training step computes, point by point as the original (Zx55/dmcp), against numbers derived here by hand."""

import math

import numpy as np
import pytest
import torch

from dslim.config import ModelConfig
from dslim.errors import UserError
from dslim.methods.dmcp import Dmcp, DmcpConfig, WidthGrid, flops_loss, soft_masks
from dslim.methods.dmcp_chains import Chain, MarkovChannels, make_chains, marginals
from dslim.models import from_config
from dslim.models.complexity import MacsModel, measure
from dslim.subnet import Subnet
from dslim.training import StepContext, Where

SIZE = 32


def build(arch: str, max_width: float = 1.0):  # type: ignore[no-untyped-def]
    """The supernet as the dmcp recipes build it (MobileNet v2's last 1x1 conv a group of its own) and its chains."""
    torch.manual_seed(0)
    model = ModelConfig(arch=arch, max_width=max_width, widths=(max_width,), bn="calibrated", num_classes=10,
                        input_size=SIZE, prune_head=arch == "mobilenet_v2")  # fmt: skip
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
    stem, head = chains.chains[0], chains.chains[-1]
    assert (stem.group, stem.bins, stem.size, stem.keep) == ("stem", 14, 3, 48 - 42)
    assert (head.group, head.bins, head.size, head.keep) == ("head", 14, 128, 1920 - 14 * 128)  # `alpha_last`
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
    with torch.no_grad(), net.using(net.largest()):
        torch.testing.assert_close(net(x), net(x))
        assert not torch.allclose(net(x), masked)  # the masks are gone after the block


def test_expected_sampling_rounds_the_expected_channels_off_the_bins():
    """The original retrains `round(E[c] - 1e-4)` channels: the nearest count, a half rounded down, not a bin."""
    net, chains = build("mobilenet_v2", 1.5)
    alpha, values = math.log(0.6 / 0.4), []
    for c in chains.chains:  # every transition 0.6, except the stem's: the first bin at 1/2, the others never
        values += [0.0] + [-1e4] * (c.bins - 1) if c.group == "stem" else [alpha] * c.bins
    with torch.no_grad():
        chains.alpha.copy_(torch.tensor(values))
    subnet = chains.expected_subnet()
    assert subnet["stem"] == 7  # 6 + 3 * 0.5 = 7.5: rounded down, as round(7.5 - 1e-4)
    geometric = sum(0.6**i for i in range(1, 15))  # E[kept bins] of 14 transitions of 0.6: 1.4989...
    for c in chains.chains[1:]:
        assert subnet[c.group] == round(c.keep + c.size * geometric)
    head = chains.chains[-1]
    assert subnet["head"] == 320 and (320 - head.keep) % head.size != 0  # 128 + 128 * 1.4989 = 319.9: off the bins


def test_smallest_and_random_subnets_on_the_original_width_grid():
    """The original sets every layer of its smallest and random subnets to `make_divisible(C * w / max_width)`
    (divisor 8, at least 8) for a width `w` of [0.1, 1.5, 0.1]: its smallest stem has 8 channels, not the chain's 6."""
    net, chains = build("mobilenet_v2", 1.5)
    grid = WidthGrid.of(0.1, 1.5, 0.1)
    assert grid.widths == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5)
    smallest = grid.smallest(chains.chains)
    # by hand: 48 * 0.1 / 1.5 = 3.2 -> 8 (at least 8); 24 -> 1.6 -> 8; 144 -> 9.6 -> 8, then 16 (8 < 0.9 * 9.6);
    # 480 -> 32; 1920 -> 128
    assert (smallest["stem"], smallest["s0"], smallest["b1.expand"], smallest["s6"], smallest["head"]) == (
        8, 8, 16, 32, 128)  # fmt: skip
    seen = {g: set() for g in net.groups}
    for i in range(400):
        for g, c in grid.random(chains.chains, np.random.default_rng(i)).items():
            seen[g].add(c)
    assert seen["stem"] == {8, 16, 24, 32, 40, 48}  # 3.2 k for k = 1..15, each made divisible by 8
    assert seen["head"] == set(range(128, 1921, 128))
    r18, r18_chains = build("resnet18")  # the same rule on a ResNet (int widths otherwise): 64 * 0.1 -> 8
    assert WidthGrid.of(0.1, 1.0, 0.1).smallest(r18_chains.chains)["stem"] == 8


def test_counts_off_the_bins_respect_a_converted_groups_steps():
    """A converted grouped conv runs whole groups (here 4 channels, at least 8): expected and grid counts snap to its
    nearest allowed count, where the built-in rule (any count) would name a width it cannot run."""
    chain = Chain("g", keep=36, size=4, bins=7, step=4, least=8)
    chains = MarkovChannels([chain])
    with torch.no_grad():
        chains.alpha.copy_(torch.tensor([0.0] + [-1e4] * 6))  # E = 36 + 4 * 0.5 = 38: half way between 36 and 40
    assert chains.expected_subnet()["g"] == 36
    with torch.no_grad():
        chains.alpha[0] = 1.0  # E = 36 + 4 * 0.731 = 38.9
    assert chains.expected_subnet()["g"] == 40
    grid = WidthGrid.of(0.1, 1.0, 0.1)
    assert grid.smallest([chain])["g"] == 8  # 64 * 0.1 = 6.4 -> 8 (at least 8)
    assert grid.channels(Chain("h", 42, 6, 7, step=6, least=12), 0.1) == 12  # 8 is no multiple of 6; 6 < least


def test_scheduled_random_probability_decays_at_every_draw():
    """The original multiplies the probability of a per-layer random subnet by the decay before each
    scheduled-random draw of a step whose number (from 1) is a multiple of 10, from its second phase on, which
    starts one step before dslim's: simulated here draw by draw, against dslim's closed form."""
    net, chains = build("resnet18")
    cfg = DmcpConfig(epochs=4, warmup=0.5, num_random=2, random_decay=0.9, decay_every=3)
    method = Dmcp(cfg, net, MacsModel(net, SIZE), chains, WidthGrid.of(0.1, 1.0, 0.1))
    steps_per_epoch = 7  # second phase from step 14 (dslim), 13 (the original: its step 14, counted from 1)
    p, simulated = 1.0, {}
    for step in range(13, 28):
        for draw in range(2):
            if (step + 1) % 3 == 0:
                p *= 0.9
            simulated[step, draw] = p
    for step in range(28):
        for draw in range(2):
            got = method.random_probability(Where(step, steps_per_epoch, 4), draw)
            assert got == pytest.approx(simulated[step, draw] if step >= 14 else 1.0, rel=1e-12), (step, draw)
    del net.dmcp


def test_arch_update_uses_label_smoothing_and_the_flops_loss():
    net, chains = build("mobilenet_v2")
    cfg = DmcpConfig(epochs=2, target_macs=3e6, label_smoothing=0.1, flops_weight=0.5)
    method = Dmcp(cfg, net, MacsModel(net, SIZE), chains, WidthGrid.of(0.1, 1.0, 0.1))
    images, labels = torch.randn(6, 3, SIZE, SIZE), torch.tensor([0, 3, 9, 1, 1, 5])
    ctx = StepContext(None, net, net, None, cfg, 0, Where(10, 5, 2), 0, trains_main=False)  # type: ignore[arg-type]
    out = method.arch_pass(net, (images, labels), ctx)
    with torch.no_grad(), net.using(net.largest(), train=True), soft_masks(net, chains.masks()):
        logp = torch.log_softmax(net(images), 1)
    target = torch.full((6, 10), 0.1 / 10).scatter(1, labels[:, None], 0.9 + 0.1 / 10)  # by hand: (1 - e) + e / K
    assert float(out["loss/arch"]) == pytest.approx(float(-(target * logp).sum(1).mean()), rel=1e-5)
    assert float(out["expected_mmacs"]) == pytest.approx(float(method.expected_macs()) / 1e6, rel=1e-6)
    del net.dmcp


def test_expected_macs_gradient_is_the_derivative():
    """Autograd against central differences (float64): each depthwise conv counted once (the original's gradient
    counts it twice, its value once)."""
    net, chains = build("mobilenet_v2")
    chains = chains.double()
    with torch.no_grad():
        chains.alpha.normal_(0.5, 1.0, generator=torch.Generator().manual_seed(0))
    macs = MacsModel(net, SIZE)
    (grad,) = torch.autograd.grad(macs.macs(chains.expected_channels()), chains.alpha)
    for i in np.random.default_rng(0).choice(len(grad), 12, replace=False):
        with torch.no_grad():
            chains.alpha[i] += 1e-5
            up = float(macs.macs(chains.expected_channels()))
            chains.alpha[i] -= 2e-5
            down = float(macs.macs(chains.expected_channels()))
            chains.alpha[i] += 1e-5
        assert float(grad[i]) == pytest.approx((up - down) / 2e-5, rel=1e-6)


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
